#!/usr/bin/env bash
# Prefill GEMM fragments by ldmatrix (A per 16 rows, B per 16 items) and
# the K formats' scale-and-min as two FMAs: A = c3abe40 (bench-a), B =
# working tree (bench-b, selftest-b). Same call, 8-layer flash-q2, prefill
# to 2K and 8K with per-kernel tables; self-test of B.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r50/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-?
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|chunk|Q4_K x37|Q2_K x37" $O/selftest.txt | head -20
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local name=$1 tag=$2; $B/bench-$name run -m /dev/shm/m8.gguf --ctx 2048,8192 --gen 4 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$?"; grep -E '^## ctx' $O/$tag.md | sed 's/decode.*bound), //'; }
run a a1
run b b1
run a a2
run b b2
for f in a1 b1; do echo "== $f"; grep -E "\| gemm_" $O/$f.md | head -6; done
cd $OUT && tar czf r.tgz r && rm -rf r
