#!/usr/bin/env bash
# Full flash-q2 (43 layers) on one H200: A = 47e7034 (bench-a) and C = the
# row-scale GEMMs with gemm_q8_0 at 2 blocks per SM (bench-c of r48, the
# committed tree), same call, prefill to 2K, 8K and 64K with breakdowns.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r48/bench-a.xz .device/r48/bench-c.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-?
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
rm -f /dev/shm/m8.gguf
$B/bench-c synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
run() { local name=$1; shift; $B/bench-$name run -m /dev/shm/q2.gguf --ctx 2048,8192,65536 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 200 > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run a
run c
cat $O/a.csv $O/c.csv
for f in a c; do echo "== $f"; grep -E "\| gemm_|\| experts \|" $O/$f.md | head -8; done
cd $OUT && tar czf r.tgz r && rm -rf r
