#!/usr/bin/env bash
# ds4 bench: A = 71ffdbf (lazy kernel loading), A with CUDA_MODULE_LOADING=EAGER, B = A + cuFuncLoad of every kernel at start.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/x/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/card.txt; date -u | tee -a $OUT/card.txt
[ -f /dev/shm/q2.gguf ] || $B/ds4-b gguf synth --preset flash-q2 -o /dev/shm/q2.gguf --force > $OUT/synth.log 2>&1; tail -1 $OUT/synth.log
b() { env $3 $1 bench -m /dev/shm/q2.gguf --backend cuda --frontiers 2048,16384 -n 64 --csv $OUT/$2.csv > $OUT/$2.log 2>&1; echo "$2 rc=$?"; cat $OUT/$2.csv | tail -2; }
b $B/ds4-a a X=1
b $B/ds4-b b X=1
b $B/ds4-a a_eager CUDA_MODULE_LOADING=EAGER
b $B/ds4-b b2 X=1
