#!/usr/bin/env bash
# A = 71ffdbf (.device/a), B = working tree (.device/perf): same call.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
P=.device/perf
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; date -u
$P/ds4-cuda-selftest --data tests/data/tiny_a > $OUT/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|hc_post" $OUT/selftest.txt
[ -f /dev/shm/q2.gguf ] || $P/ds4-cuda-bench synth --preset flash-q2 -o /dev/shm/q2.gguf 2>&1 | tail -1
run() { $1 run -m /dev/shm/q2.gguf --ctx $2 --gen 32 --csv $OUT/$3.csv --breakdown $OUT/$3.md --deadline-s 60 > $OUT/$3.txt 2>&1; echo "$3 rc=$?"; }
run .device/a/ds4-cuda-bench 2048 a
run $P/ds4-cuda-bench 2048,16384 b
run .device/a/ds4-cuda-bench 2048 a2
for f in a b a2; do echo "$f: $(grep -E '^## ctx' $OUT/$f.md | tr '\n' ' ')"; done
for f in a b; do echo "== $f"; sed -n '/decode step, per kernel/,/total/p' $OUT/$f.md | grep -E "hc_|total"; done
