#!/usr/bin/env bash
# A = 61cc524 (bench-a); B = working tree (bench-b, selftest-b): gemm_split_x
# with a quad of lanes per 32-value group (8 values each, max and sums by
# shuffles; same results). Self-test on this code; same call, 8-layer
# flash-q2 at 2K.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r38/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|chunk" $O/selftest.txt | head -20
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 100 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run $B/bench-a a
run $B/bench-b b
for f in a b; do echo "== $f"; grep -E "\| gemm_split_x" $O/$f.md | head -2; done
cd $OUT && tar czf r.tgz r && rm -rf r
