#!/usr/bin/env bash
# One binary (working tree: int8-plane expert GEMVs with 32-copy selector
# tables), same call on one H200: self-test; 8-layer products and decode with
# --int8-experts off / on; then the full flash-q2 (43 layers) at 2K and 64K
# with --int8-experts off (the previous main's expert kernels) and on, with
# the per-stage breakdowns.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r46/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-b
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|2\^" $O/selftest.txt | head -10
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
$B/bench-b products -m /dev/shm/m8.gguf > $O/products-on.txt 2>&1; echo "products rc=$?"; grep -E "routed" $O/products-on.txt
run8() { local name=$1; shift; $B/bench-b run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 100 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run8 m8-off --int8-experts off
run8 m8-on --int8-experts on
grep -E "\| gemv_(iq2|q2_k)" $O/m8-off.md $O/m8-on.md | head -4
rm -f /dev/shm/m8.gguf
$B/bench-b synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
run() { local name=$1; shift; $B/bench-b run -m /dev/shm/q2.gguf --ctx 2048,65536 --gen 32 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 200 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run off --int8-experts off
run on --int8-experts on
cat $O/off.csv $O/on.csv
grep -E "^\| experts|\| gemv_(iq2|q2_k)" $O/off.md $O/on.md | head -12
cd $OUT && tar czf r.tgz r && rm -rf r
