#!/usr/bin/env bash
# hc_pre_one's finish with the partials loaded by all threads at once
# (shared memory, one memory latency) instead of per-thread loops, on top of
# HC-post folded into hc_pre_one. A = 77c7e16, B = r57's bench-b (fold
# only), C = working tree (fold + partials; explicit roundings in HC-post).
# Same call: self-test of C; 8-layer flash-q2 decode at 2K, A B C twice.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r59/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-c --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|hc_post \+" $O/selftest.txt | head -12
[ -f /dev/shm/m8.gguf ] || $B/bench-c synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
run8() { local v=$1 tag=$2; $B/bench-$v run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//') $(grep -E '^\| hc_pre_one ' $O/$tag.md | head -1)"; }
for r in 1 2; do run8 a a$r; run8 b b$r; run8 c c$r; done
cd $OUT && tar czf r.tgz r && rm -rf r
