#!/usr/bin/env bash
# B = working tree (bench-b, selftest-b): the GEMM's weight decoders build
# f16 pairs with one byte permute and one f16x2 subtraction per two values
# (bit-identical weights). Baselines from r32 in the same call: B2 (all
# formats at 2 blocks per SM; = bf5ff5e for IQ2_XXS/Q2_K/F16) and B3 (3
# blocks per SM; = bf5ff5e for Q8_0). 8-layer flash-q2, 2K/16K/64K.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r33/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|chunk|GEMM|gemm" $O/selftest.txt | head -30
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048,16384,65536 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 150 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run $B/bench-b2 b2
run $B/bench-b3 b3
run $B/bench-b b
for f in b2 b3 b; do echo "== $f"; sed -n '/one prefill chunk of 2048 tokens at 2048/,/## ctx 16384/p' $O/$f.md | grep -E "gemm_|attend_mma|total"; done
cd $OUT && tar czf r.tgz r && rm -rf r
