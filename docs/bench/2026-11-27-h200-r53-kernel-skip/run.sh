#!/usr/bin/env bash
# Marginal cost of kernels in the dependent-launch chain of a decode step:
# bench-s (c6f651b + experiment.diff) does not launch the kernels named in
# DS4_EXP_SKIP during the gated GPU step (median of 5; results garbage,
# timing only). 8-layer flash-q2, ctx 2048.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r53/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-?
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/m8.gguf ] || $B/bench-s synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
n=0
for skip in none hc_post hc_pre_one swiglu attend_combine attend_part qkv_post,head_norm_rope,rope_copy append_raw compress_step index_q_prep gemv_f16 gemv_q8_0_xr gemv_iq2_xxs_i8,gemv_q2_k_i8 none hc_post,hc_pre_one,swiglu,attend_combine,qkv_post,head_norm_rope,rope_copy,append_raw,compress_step; do
  n=$((n+1))
  DS4_EXP_SKIP=$skip $B/bench-s run -m /dev/shm/m8.gguf --ctx 2048 --gen 8 --deadline-s 60 > $O/run$n.txt 2>&1
  echo "$skip rc=$? $(grep -oE 'GPU time of a gated step [0-9.]+ ms' $O/run$n.txt)"
done
cd $OUT && tar czf r.tgz r && rm -rf r
