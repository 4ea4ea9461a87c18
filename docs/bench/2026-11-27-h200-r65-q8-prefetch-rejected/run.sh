#!/usr/bin/env bash
# r65: full flash-q2 on one H200, decode at 2K: C = r64's C vs D = C + an
# L2 bulk prefetch of gemv_q8_0_xr's second row batch before the
# dependent-launch wait. C D C D.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r65/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/q2.gguf ] || $B/bench-c synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1
run() { local v=$1 tag=$2 ctx=$3 dl=$4; $B/bench-$v run -m /dev/shm/q2.gguf --ctx $ctx --gen 32 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s $dl > $O/$tag.txt 2>&1; echo "$tag rc=$? $(grep -E '^## ctx' $O/$tag.md)"; }
run c c1 2048 60; run d d1 2048 60; run c c2 2048 60; run d d2 2048 60
cd $OUT && tar czf r.tgz r && rm -rf r
