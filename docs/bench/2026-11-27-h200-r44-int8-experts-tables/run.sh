#!/usr/bin/env bash
# Expert GEMVs on int8 activation planes (matvec_i8.cu, dp4a) against the f32
# kernels, one binary (working tree), `--int8-experts on|off`, same call:
# self-test, per-product times (products), 8-layer decode + prefill at 2K;
# blocks quantise x themselves (no x_planes launch) after issuing their first
# weight loads, and load pass p + 1 while computing pass p.
# IQ2_XXS words by byte permute from 16-copy selector tables; x planes padded
# every 8 groups (bank-conflict-free for both formats). Nsight on the new kernels.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r44/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-b
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|2\^|IQ2_XXS x3|Q2_K x3" $O/selftest.txt | head -30
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
for v in off on; do $B/bench-b products -m /dev/shm/m8.gguf --int8-experts $v > $O/products-$v.txt 2>&1; echo "products $v rc=$?"; grep -iE "gate|up|down|exps" $O/products-$v.txt | head -12; done
run() { local name=$1; shift; $B/bench-b run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 100 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md; }
run off --int8-experts off
run on --int8-experts on
for f in off on; do echo "== $f"; grep -E "\| gemv_(iq2|q2_k)|\| x_planes|\| experts" $O/$f.md | head -8; done

NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
M=smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,launch__registers_per_thread,launch__grid_size
$NCU --clock-control none -k regex:"gemv_iq2_xxs_i8|gemv_q2_k_i8" --launch-count 4 --metrics $M --csv --page raw $B/bench-b products -m /dev/shm/m8.gguf --reps 2 --runs 1 > $O/ncu.csv 2> $O/ncu.err; echo "ncu rc=$?"
python3 - $O/ncu.csv <<'PY' | tee $O/ncu_summary.txt
import csv, sys
lines = open(sys.argv[1]).read().splitlines()
i = next(k for k, l in enumerate(lines) if l.startswith('"ID"'))
rows = list(csv.reader(lines[i:])); h = rows[0]
for r in rows[2:]:
    print("==", r[h.index("Kernel Name")][:24])
    print("  ", "; ".join(c.split(".")[0].replace("smsp__average_warps_issue_stalled_", "stall_") + "=" + r[k] for k, c in enumerate(h) if "__" in c))
PY
cd $OUT && tar czf r.tgz r && rm -rf r
