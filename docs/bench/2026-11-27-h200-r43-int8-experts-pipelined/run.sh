#!/usr/bin/env bash
# Expert GEMVs on int8 activation planes (matvec_i8.cu, dp4a) against the f32
# kernels, one binary (working tree), `--int8-experts on|off`, same call:
# self-test, per-product times (products), 8-layer decode + prefill at 2K;
# blocks quantise x themselves (no x_planes launch) after issuing their first
# weight loads, and load pass p + 1 while computing pass p.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r43/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-b
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|2\^|IQ2_XXS x3|Q2_K x3" $O/selftest.txt | head -30
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
for v in off on; do $B/bench-b products -m /dev/shm/m8.gguf --int8-experts $v > $O/products-$v.txt 2>&1; echo "products $v rc=$?"; grep -iE "gate|up|down|exps" $O/products-$v.txt | head -12; done
run() { local name=$1; shift; $B/bench-b run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 100 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run off --int8-experts off
run on --int8-experts on
for f in off on; do echo "== $f"; grep -E "\| gemv_(iq2|q2_k)|\| x_planes|\| experts" $O/$f.md | head -8; done

cd $OUT && tar czf r.tgz r && rm -rf r
