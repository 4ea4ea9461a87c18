#!/usr/bin/env bash
# r66: full flash-q2 on one H200, the session's C binary (r64): prefill to 8K
# in chunks of 2048, 4096 and 8192 tokens (same call), then 2048 again.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r66/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/q2.gguf ] || $B/bench-c synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1
run() { local ch=$1 tag=$2; $B/bench-c run -m /dev/shm/q2.gguf --ctx 8192 --chunk $ch --gen 8 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 90 > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md)"; grep -E "^### one prefill" $O/$tag.md; grep -E "^\| experts \|" $O/$tag.md | tail -1; }
run 2048 k2; run 4096 k4; run 8192 k8; run 2048 k2b
cd $OUT && tar czf r.tgz r && rm -rf r
