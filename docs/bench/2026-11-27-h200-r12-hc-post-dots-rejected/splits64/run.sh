#!/usr/bin/env bash
# A = 71ffdbf (bench-a), B = working tree (bench-b, ds4-b, selftest-b): same call.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/x/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/card.txt; date -u | tee -a $OUT/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $OUT/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|hc_post" $OUT/selftest.txt
[ -f /dev/shm/q2.gguf ] || $B/ds4-b gguf synth --preset flash-q2 -o /dev/shm/q2.gguf --force > $OUT/synth.log 2>&1; tail -1 $OUT/synth.log
run() { $1 run -m /dev/shm/q2.gguf --ctx $2 --gen 32 --csv $OUT/$3.csv --breakdown $OUT/$3.md --deadline-s 60 > $OUT/$3.txt 2>&1; echo "$3 rc=$?"; }
run $B/bench-a 2048 a
run $B/bench-b 2048,16384 b
for f in a b; do echo "$f: $(grep -E '^## ctx' $OUT/$f.md | tr '\n' ' ')"; done
for f in a b; do echo "== $f"; sed -n '/decode step, per kernel/,/total/p' $OUT/$f.md | grep -E "hc_|total"; done
$B/ds4-b bench -m /dev/shm/q2.gguf --backend cuda --frontiers 2048,16384 -n 64 --csv $OUT/bench_flash_q2_h200.csv --svg $OUT/bench_flash_q2_h200.svg > $OUT/bench.log 2>&1; echo "ds4 bench rc=$?"
cat $OUT/bench_flash_q2_h200.csv
