#!/usr/bin/env bash
# r63: 8-layer flash-q2, decode at 2K: A = 4270a5c, B = c813930 (Q8_0 xr
# early weight loads), C = B + gemv_f16 first chunk before the wait, IQ2_XXS
# selector tables before the wait, the shared expert's gate/up launched
# before the routed one. Self-test of C; A B C x3; products of A and C.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r63/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-c --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed" $O/selftest.txt | head -6
[ -f /dev/shm/m8.gguf ] || $B/bench-c synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local v=$1 tag=$2; $B/bench-$v run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//')"; }
run a a1; run b b1; run c c1; run a a2; run b b2; run c c2; run a a3; run b b3; run c c3
for v in a c; do $B/bench-$v products -m /dev/shm/m8.gguf > $O/products-$v.md 2>&1; done
paste -d"\n" <(grep -E "^\| [a-z]" $O/products-a.md) <(grep -E "^\| [a-z]" $O/products-c.md) | cut -c1-120
cd $OUT && tar czf r.tgz r && rm -rf r
