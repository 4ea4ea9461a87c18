#!/usr/bin/env bash
# r70: Nsight Compute on the IQ2_XXS expert GEMVs (products bench, 8-layer
# flash-q2, r69 binary): dp4a (--mma-experts off) vs tensor cores (on):
# pipe use, shared-memory wavefronts and bank conflicts, stall reasons.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r70/bench-c.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-c
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/m8.gguf ] || $B/bench-c synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
M=smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_uniform.avg.pct_of_peak_sustained_active,dram__bytes_read.sum,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_branch_resolving_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,launch__registers_per_thread,launch__grid_size
for v in off on; do
$NCU --clock-control none -k regex:"gemv_iq2" --launch-skip 2 --launch-count 2 --metrics $M \
  --csv --page raw $B/bench-c products -m /dev/shm/m8.gguf --reps 2 --runs 1 --mma-experts $v > $O/ncu-$v.csv 2> $O/ncu-$v.err; echo "ncu $v rc=$?"
done
python3 - $O/ncu-off.csv $O/ncu-on.csv <<'PY' | tee $O/summary.txt
import csv, sys
for f in sys.argv[1:]:
    rows = [r for r in csv.reader(open(f))]
    i = next(k for k, r in enumerate(rows) if r and r[0] == "ID")
    h = rows[i]; data = rows[i + 2:]
    seen = set()
    for r in data:
        name = r[h.index("Kernel Name")][:20]
        if name in seen: continue
        seen.add(name)
        print("==", f.split('/')[-1], name)
        for k, col in enumerate(h):
            if "__" in col: print("   ", col.replace("smsp__average_warps_issue_stalled_", "stall_").replace("_per_issue_active.ratio", ""), r[k])
PY
cd $OUT && tar czf r.tgz r && rm -rf r
cd $OUT && tar czf r.tgz r && rm -rf r
