#!/usr/bin/env bash
# r61: 8-layer flash-q2 on one GPU: marginal kernel costs (decode step at 2K,
# each kernel left out in turn) with weight loads evict-first off and on, then
# run A/B of --weights-evict-first off|on (same binary, off on off on).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r61/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/bench-c synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
for e in off on; do $B/bench-c marginal -m /dev/shm/m8.gguf --ctx 2048 --weights-evict-first $e > $O/marginal-$e.txt 2>&1; echo "marginal $e rc=$?"; done
run() { local e=$1 tag=$2; $B/bench-c run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --weights-evict-first $e --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//')"; }
run off off1; run on on1; run off off2; run on on2
cat $O/marginal-off.txt | head -60
cd $OUT && tar czf r.tgz r && rm -rf r
