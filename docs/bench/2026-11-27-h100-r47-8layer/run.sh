#!/usr/bin/env bash
# One H100, the tree of r46 (int8-plane expert GEMVs): self-test, then the
# 8-layer flash-q2 decode at 2K with --int8-experts off / on, for the
# per-layer comparison with the H200's r46 m8 runs (same binary).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r47/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-b
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|2\^" $O/selftest.txt | head -10
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
$B/bench-b products -m /dev/shm/m8.gguf > $O/products-on.txt 2>&1; echo "products rc=$?"; grep -E "routed" $O/products-on.txt
run8() { local name=$1; shift; $B/bench-b run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 100 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run8 m8-off --int8-experts off
run8 m8-on --int8-experts on
sed -n '/decode step, per stage/,/sum of stages/p' $O/m8-on.md
cd $OUT && tar czf r.tgz r && rm -rf r
