#!/usr/bin/env bash
# Bound on what staging the int8 planes costs: bench-b = r51's working tree;
# bench-x = the same with stage_planes replaced by a 16-byte copy of the
# plane bytes from global memory (garbage values: timing only). 8-layer
# products, same call, twice each.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r51/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-?
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/m8.gguf ] || $B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
for v in b x b x; do $B/bench-$v products -m /dev/shm/m8.gguf > $O/products-$v.txt 2>&1; echo "products $v rc=$?"; grep -E "routed|shared|q_a" $O/products-$v.txt; done
cd $OUT && tar czf r.tgz r && rm -rf r
