#!/usr/bin/env bash
# A = 61cc524 (bench-a); B = working tree (bench-b, selftest-b): the F16
# decode GEMVs with the x slice in registers (gemv_f16_xr, the Q8_0 xr
# kernel's structure, one template now), against --f16-x-registers off in
# the same binary. Same call, 8-layer flash-q2: run (2K, 64K) and products.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r37/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|F16|f16" $O/selftest.txt | head -20
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048,65536 --gen 32 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 150 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run $B/bench-a a
run $B/bench-b b
run $B/bench-b b_off --f16-x-registers off
run $B/bench-a a2
run $B/bench-b b2
$B/bench-b products -m /dev/shm/m8.gguf > $O/products_b.md 2>&1
$B/bench-b products -m /dev/shm/m8.gguf --f16-x-registers off > $O/products_off.md 2>&1
for f in products_b products_off; do echo "== $f"; grep -iE "f16|compressor|indexer|router" $O/$f.md | head -12; done
for f in a b b_off; do echo "== $f"; grep -E "\| gemv_f16" $O/$f.md | head -4; done
cd $OUT && tar czf r.tgz r && rm -rf r
