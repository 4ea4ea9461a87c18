#!/usr/bin/env bash
# HC-post folded into the next sublayer's hc_pre_one (decode): each
# block forms its split of the new HC state. A = 77c7e16 (bench-a), B =
# working tree (bench-b, selftest-b). Same call: self-test of B; 8-layer
# flash-q2 decode at 2K, A B A B.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r57/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-?
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|hc_post|chunk|determin" $O/selftest.txt | head -24
[ -f /dev/shm/m8.gguf ] || $B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
run8() { local v=$1 tag=$2; $B/bench-$v run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$?"; grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//'; }
run8 a a1
run8 b b1
run8 a a2
run8 b b2
for f in a1 b1; do echo "== $f"; grep -E "^\| (hc_pre|hc_post|hc_pre_one) " $O/$f.md | head -6; done
cd $OUT && tar czf r.tgz r && rm -rf r
