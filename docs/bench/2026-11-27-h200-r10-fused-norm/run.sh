#!/usr/bin/env bash
# A = committed kernels (.device/a), B = working tree (.device/perf), same call.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
P=.device/perf
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $OUT/gpu.txt
date -u > $OUT/date.txt
$P/ds4-cuda-selftest --data tests/data/tiny_a > $OUT/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|fused" $OUT/selftest.txt
[ -f /dev/shm/q2.gguf ] || $P/ds4-cuda-bench synth --preset flash-q2 -o /dev/shm/q2.gguf > $OUT/synth.txt 2>&1; tail -1 $OUT/synth.txt
.device/a/ds4-cuda-bench run -m /dev/shm/q2.gguf --ctx 2048 --gen 32 --csv $OUT/a.csv --breakdown $OUT/a.md --deadline-s 50 > $OUT/a.txt 2>&1; echo "A rc=$?"
$P/ds4-cuda-bench run -m /dev/shm/q2.gguf --ctx 2048,16384 --gen 32 --csv $OUT/b.csv --breakdown $OUT/b.md --deadline-s 110 > $OUT/b.txt 2>&1; echo "B rc=$?"
.device/a/ds4-cuda-bench run -m /dev/shm/q2.gguf --ctx 2048 --gen 32 --csv $OUT/a2.csv --deadline-s 50 > $OUT/a2.txt 2>&1; echo "A2 rc=$?"
cat $OUT/a.csv $OUT/b.csv $OUT/a2.csv | cut -d, -f2,4,6,8,9
grep -E "^## ctx" $OUT/a.md $OUT/b.md
for f in a b; do echo "== $f"; sed -n '/decode step, per kernel/,/total/p' $OUT/$f.md | head -16; done
