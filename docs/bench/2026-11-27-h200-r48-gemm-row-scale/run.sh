#!/usr/bin/env bash
# Prefill GEMMs with one x scale per row (gemm_split_x) and one flush per
# slab for single-scale formats: A = 47e7034 (bench-a), B = working tree
# (bench-b, selftest-b), C = B with gemm_q8_0 at 2 blocks per SM (no spills).
# Same call, 8-layer flash-q2, prefill to 2K and 8K with per-kernel tables.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r48/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-?
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|chunk|x37|batched" $O/selftest.txt | head -40
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local name=$1; shift; $B/bench-$name run -m /dev/shm/m8.gguf --ctx 2048,8192 --gen 8 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 100 > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run a
run b
run c
run a
run b
for f in a b c; do echo "== $f"; grep -E "\| gemm_|\| experts|\| attention_(in|out)" $O/$f.md | head -16; done
cd $OUT && tar czf r.tgz r && rm -rf r
