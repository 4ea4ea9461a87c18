#!/usr/bin/env bash
# 8-layer flash-q2 on one H100 (the per-layer comparison with the H200 runs
# of the same 8-layer file, r21/r22): A = 5c09451, B = working tree.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r22/bench-a.xz .device/r22/bench-b.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 60 "$@" > $O/$name.txt 2>&1; echo "$name rc=$? $(grep -E '^## ctx' $O/$name.md)"; }
run $B/bench-a a
run $B/bench-b b
cat $O/b.csv
sed -n '/decode step, per stage/,/sum of stages/p' $O/b.md
cd $OUT && tar czf r.tgz r && rm -rf r
