#!/usr/bin/env bash
# r74: 8-layer flash-q2: A = e3467da (r72's C) vs C = A + attend_part
# (decode) with all of a warp's key loads in flight before its stores and
# four keys' score butterflies interleaved. Self-test of C; decode at 2K
# and 64K, A C A C.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r74/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-c --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed" $O/selftest.txt | head -6
[ -f /dev/shm/m8.gguf ] || $B/bench-c synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local v=$1 tag=$2; $B/bench-$v run -m /dev/shm/m8.gguf --ctx 2048,65536 --gen 32 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 100 > $O/$tag.txt 2>&1; echo "$tag rc=$?"; grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//'; grep -E "^\| (attend_part|attend_combine)" $O/$tag.md | head -4; }
run a a1; run c c1; run a a2; run c c2
cd $OUT && tar czf r.tgz r && rm -rf r
