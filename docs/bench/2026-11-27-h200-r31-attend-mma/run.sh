#!/usr/bin/env bash
# Working tree (bench-b, selftest-b): batch attention on the tensor cores
# (attend_mma) against attend_heads in the same binary (--attention-mma
# off). Same call, 8-layer flash-q2, 2K/16K/64K.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r31/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|attend|chunk|tier 2 layer . att|official" $O/selftest.txt | head -40
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local name=$1; shift; $B/bench-b run -m /dev/shm/m8.gguf --ctx 2048,16384,65536 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 150 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run heads --attention-mma off
run mma
for f in heads mma; do echo "== $f"; grep -E "\| attend_(heads|mma)" $O/$f.md | head -6; done
cd $OUT && tar czf r.tgz r && rm -rf r
