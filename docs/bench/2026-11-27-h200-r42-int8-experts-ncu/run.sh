#!/usr/bin/env bash
# Nsight Compute on the expert GEMVs (products bench, 8-layer flash-q2): the
# f32 kernels (--int8-experts off) and the int8-plane kernels (r41 binary):
# pipe use, shared-memory wavefronts and bank conflicts, stall reasons.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r41/bench-b.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-b
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/m8.gguf ] || $B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
M=smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,launch__registers_per_thread,launch__grid_size
for v in off on; do
$NCU --clock-control none -k regex:"gemv_iq2|gemv_q2_k|x_planes" --launch-skip 6 --launch-count 6 --metrics $M \
  --csv --page raw $B/bench-b products -m /dev/shm/m8.gguf --reps 2 --runs 1 --int8-experts $v > $O/ncu-$v.csv 2> $O/ncu-$v.err; echo "ncu $v rc=$?"
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
