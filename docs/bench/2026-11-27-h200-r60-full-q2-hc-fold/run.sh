#!/usr/bin/env bash
# Full flash-q2 (43 layers), decode at 2K: A = 77c7e16 (bench-a) vs C =
# working tree (bench-c: HC-post folded into the next sublayer's
# hc_pre_one on decode). Same call: self-test of C; A C A C.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r60/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-c --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed" $O/selftest.txt | head -6
rm -f /dev/shm/m8.gguf
$B/bench-c synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
run() { local v=$1 tag=$2; $B/bench-$v run -m /dev/shm/q2.gguf --ctx 2048 --gen 32 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//')"; }
run a a1; run c c1; run a a2; run c c2
cd $OUT && tar czf r.tgz r && rm -rf r
