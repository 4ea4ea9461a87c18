#!/usr/bin/env bash
# r73: full flash-q2 (43 layers) on one H200: A = ff2ebae (r64's C), C =
# e3467da (r72: topk offsets by warp scans, attend_combine staged), D = C +
# topk_select on 256 threads up to 8192 rows. Self-test of D; decode at 2K
# A C D A C D; at 64K A D.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r73/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-d --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed" $O/selftest.txt | head -6
rm -f /dev/shm/m8.gguf
[ -f /dev/shm/q2.gguf ] || $B/bench-d synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log 2>/dev/null
run() { local v=$1 tag=$2 ctx=$3 dl=$4; $B/bench-$v run -m /dev/shm/q2.gguf --ctx $ctx --gen 32 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s $dl > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md)"; grep -E "^\| (topk_select|attend_combine)" $O/$tag.md | head -2; }
run a a1 2048 60; run c c1 2048 60; run d d1 2048 60; run a a2 2048 60; run c c2 2048 60; run d d2 2048 60
run a a64 65536 120; run d d64 65536 120
cd $OUT && tar czf r.tgz r && rm -rf r
