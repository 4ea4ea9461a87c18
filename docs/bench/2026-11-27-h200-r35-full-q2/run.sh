#!/usr/bin/env bash
# Full flash-q2 (43 layers) on one H200. A = 3671c58 (bench-a, the last
# session's main) and B = 976e1e5 (bench-b: tiled indexer scores,
# attend_mma_f16, 4-warp GEMM blocks with f16 pairs of x and byte-permute
# decoders), same call, at 2K and 64K (B also 8K), with the per-stage
# breakdowns.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r35/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/bench-b synth --preset flash-q2 -o /dev/shm/q2.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
$B/bench-a run -m /dev/shm/q2.gguf --ctx 2048,65536 --gen 32 --csv $O/a.csv --breakdown $O/a.md --deadline-s 240 > $O/a.txt 2>&1; echo "a rc=$?"; grep -E '^## ctx' $O/a.md
$B/bench-b run -m /dev/shm/q2.gguf --ctx 2048,8192,65536 --gen 32 --csv $O/b.csv --breakdown $O/b.md --deadline-s 240 > $O/b.txt 2>&1; echo "b rc=$?"; grep -E '^## ctx' $O/b.md
cat $O/a.csv $O/b.csv
cd $OUT && tar czf r.tgz r && rm -rf r
