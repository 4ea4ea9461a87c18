#!/usr/bin/env bash
# A = 7eff538 (bench-a); B = working tree (bench-b, selftest-b): hc_pre_one's
# finish split between warp 0 (Sinkhorn) and warps 1.. (y and its norm, in
# registers, named barrier). Same call, 8-layer flash-q2.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r24/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|hc_pre" $O/selftest.txt | head
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 60 "$@" > $O/$name.txt 2>&1; echo "$name rc=$? $(grep -E '^## ctx' $O/$name.md)"; }
run $B/bench-a a
run $B/bench-b b
run $B/bench-a a2
run $B/bench-b b2
for f in a b; do echo "== $f"; sed -n '/decode step, per kernel/,/total/p' $O/$f.md | grep -E "hc_|total"; done
cd $OUT && tar czf r.tgz r && rm -rf r
