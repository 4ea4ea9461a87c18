#!/usr/bin/env bash
# r62: 8-layer flash-q2, decode at 2K: A = 4270a5c vs C = gemv_q8_0_xr with
# its first batch's weight loads before the dependent-launch wait and the
# next batch's loads in flight during the sums. Self-test of C; A C A C;
# products of both.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r62/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-c --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed" $O/selftest.txt | head -6
[ -f /dev/shm/m8.gguf ] || $B/bench-c synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local v=$1 tag=$2; $B/bench-$v run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//')"; }
run a a1; run c c1; run a a2; run c c2; run a a3; run c c3
for v in a c; do $B/bench-$v products -m /dev/shm/m8.gguf > $O/products-$v.md 2>&1; done
paste -d'\n' <(grep -E "^\| (attn|shared|output)" $O/products-a.md) <(grep -E "^\| (attn|shared|output)" $O/products-c.md)
cd $OUT && tar czf r.tgz r && rm -rf r
