#!/usr/bin/env bash
# A = 783681b (bench-a); B = working tree (bench-b, selftest-b): official
# numerics' batch attention reads f16 copies of the key cache (exact: every
# cached row is f16) by cp.async into two buffers (attend_mma_f16). Same
# call, 8-layer flash-q2, 2K/16K/64K.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r34/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|official|tier 2 layer . att|determinism" $O/selftest.txt | head -30
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048,16384,65536 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 150 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run $B/bench-a a
run $B/bench-b b
for f in a b; do echo "== $f"; grep -E "\| (attend_mma|to_f16)" $O/$f.md | head -8; done
cd $OUT && tar czf r.tgz r && rm -rf r
