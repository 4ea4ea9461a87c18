#!/usr/bin/env bash
# A = 27cf090 (bench-a); B = working tree: GEMM blocks of 4 warps, each
# 64 rows x 32 items (2 x 2), instead of 8 warps of 32 x 32: B3 with
# __launch_bounds__(128, 3) (168 registers, some spills), B2 with (128, 2)
# (up to 255 registers). Same call, 8-layer flash-q2, 2K/16K/64K.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r32/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest (B3) rc=$?"
grep -E "summary|FAIL|failed|chunk|GEMM|gemm" $O/selftest.txt | head -30
$B/bench-a synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048,16384,65536 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 150 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run $B/bench-a a
run $B/bench-b3 b3
run $B/bench-b2 b2
for f in a b3 b2; do echo "== $f"; sed -n '/one prefill chunk of 2048 tokens at 2048/,/## ctx 16384/p' $O/$f.md | grep -E "gemm_|total"; done
cd $OUT && tar czf r.tgz r && rm -rf r
