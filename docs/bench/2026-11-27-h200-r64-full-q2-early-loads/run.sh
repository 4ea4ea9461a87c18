#!/usr/bin/env bash
# r64: full flash-q2 (43 layers) on one H200: A = 4270a5c (bench-a) vs C =
# the session's kernels (bench-c: weight loads before the dependent-launch
# wait in gemv_q8_0_xr, gemv_f16, hc_pre_one; IQ2_XXS tables before it; the
# shared expert's gate/up first). Self-test of C (8-layer synth first for the
# 8-layer A C pair), decode at 2K A C A C, then C and A at 64K.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r64/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-c --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed" $O/selftest.txt | head -6
rm -f /dev/shm/m8.gguf
$B/bench-c synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
run() { local v=$1 tag=$2 ctx=$3 dl=$4; $B/bench-$v run -m /dev/shm/q2.gguf --ctx $ctx --gen 32 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s $dl > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md)"; }
run a a1 2048 60; run c c1 2048 60; run a a2 2048 60; run c c2 2048 60
run c c64 65536 120; run a a64 65536 120
cd $OUT && tar czf r.tgz r && rm -rf r
