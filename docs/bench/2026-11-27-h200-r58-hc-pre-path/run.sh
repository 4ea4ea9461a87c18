#!/usr/bin/env bash
# Where hc_pre_one's time goes: bench-x = r57's tree + experiment.diff, with
# DS4_EXP_HC_ITERS = 20 (the model's Sinkhorn iterations), 0 (no Sinkhorn
# iterations) or -1 (the last block skips the whole finish: no mix, y or
# norm). Timing only. 8-layer flash-q2 decode at 2K, twice each.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r58/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/m8.gguf ] || $B/bench-x synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
for r in 1 2; do for it in 20 0 -1; do
  DS4_EXP_HC_ITERS=$it $B/bench-x run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/it$it-$r.csv --breakdown $O/it$it-$r.md --deadline-s 60 > $O/it$it-$r.txt 2>&1
  echo "iters $it run $r rc=$? $(grep -E '^## ctx' $O/it$it-$r.md | sed 's/; prefill.*//') $(grep -E '^\| hc_pre_one ' $O/it$it-$r.md | head -1)"
done; done
cd $OUT && tar czf r.tgz r && rm -rf r
