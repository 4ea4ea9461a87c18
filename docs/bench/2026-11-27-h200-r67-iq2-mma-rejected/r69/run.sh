#!/usr/bin/env bash
# r69: gemv_iq2_xxs_mma with each warp streaming its tiles through a 4-step cp.async ring vs
# the dp4a kernel (--mma-experts off), one binary. Self-test (mma on by
# default); 8-layer flash-q2: products off/on, decode at 2K off on off on.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r69/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-c --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|IQ2_XXS" $O/selftest.txt | head -12

[ -f /dev/shm/m8.gguf ] || $B/bench-c synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
for e in off on; do $B/bench-c products -m /dev/shm/m8.gguf --mma-experts $e > $O/products-$e.md 2>&1; grep -E "routed gate" $O/products-$e.md; done
run() { local e=$1 tag=$2; $B/bench-c run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --mma-experts $e --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//')"; grep -E "gemv_iq2" $O/$tag.md | head -2; }
run off off1; run on on1; run off off2; run on on2
cd $OUT && tar czf r.tgz r && rm -rf r
