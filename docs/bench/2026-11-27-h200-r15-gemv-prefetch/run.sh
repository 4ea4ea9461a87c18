#!/usr/bin/env bash
# A = 5c09451 (bench-a); B = working tree (bench-b, selftest-b): GEMV grids of
# resident blocks over contiguous row runs + L2 weight prefetch before the
# dependent-launch wait. Same call, 8-layer flash-q2.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r15/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/card.txt; date -u | tee -a $OUT/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $OUT/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL" $OUT/selftest.txt
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $OUT/synth.log 2>&1; tail -1 $OUT/synth.log
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $OUT/$name.csv --breakdown $OUT/$name.md --deadline-s 60 "$@" > $OUT/$name.txt 2>&1; echo "$name rc=$? $(grep -E '^## ctx' $OUT/$name.md)"; }
run $B/bench-a a
run $B/bench-b b_all_off --gemv-blocks all --weight-prefetch off
run $B/bench-b b_all_on --gemv-blocks all --weight-prefetch on
run $B/bench-b b_res_off --gemv-blocks resident --weight-prefetch off
run $B/bench-b b_res_on
run $B/bench-b b_4_on --gemv-blocks 4
run $B/bench-b b_8_on --gemv-blocks 8
run $B/bench-a a2
run $B/bench-b b_res_on2
for f in a b_all_off b_res_on; do echo "== $f"; sed -n '/decode step, per kernel/,/total/p' $OUT/$f.md | grep -E "gemv|hc_dots|total"; done
$B/bench-b products -m /dev/shm/m8.gguf > $OUT/products_res_on.md 2>&1; echo "products rc=$?"
$B/bench-b products -m /dev/shm/m8.gguf --gemv-blocks all --weight-prefetch off > $OUT/products_all_off.md 2>&1
cat $OUT/products_res_on.md $OUT/products_all_off.md | grep -E "^\|"
