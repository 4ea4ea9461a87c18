#!/usr/bin/env bash
# Nsight Compute on the Q8_0 decode GEMV (products bench, 8-layer flash-q2):
# warp stall reasons and memory workload of each Q8_0 product.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r19/bench-b.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
[ -f /dev/shm/m8.gguf ] || $B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
$NCU --clock-control none -k regex:"gemv_q8_0|gemv_iq2|gemv_q2_k" --launch-count 40 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats \
  --csv --page details $B/bench-b products -m /dev/shm/m8.gguf --reps 2 --runs 1 > $O/ncu.csv 2> $O/ncu.err; echo "ncu rc=$?"
python3 - $O/ncu.csv <<'PY'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
hdr = None
for i, r in enumerate(rows):
    if r and r[0] == "ID": hdr = r; start = i + 1; break
if hdr is None: print("no ncu table"); sys.exit()
ix = {h: k for k, h in enumerate(hdr)}
per = collections.OrderedDict()
for r in rows[start:]:
    if len(r) < len(hdr): continue
    key = (r[ix["ID"]], r[ix["Kernel Name"]][:22], r[ix["Grid Size"]])
    per.setdefault(key, {})[r[ix["Metric Name"]]] = r[ix["Metric Value"]]
want = ["Duration", "DRAM Throughput", "Achieved Occupancy", "Registers Per Thread", "No Eligible",
        "Stall Long Scoreboard", "Stall LG Throttle", "Stall Wait", "Stall MIO Throttle", "Stall Barrier",
        "Stall Short Scoreboard", "Stall Not Selected", "Stall Math Pipe Throttle", "Stall Drain", "Stall Selected",
        "Stall No Instruction", "L1/TEX Hit Rate", "L2 Hit Rate", "Mem Busy", "Max Bandwidth", "Issued Warp Per Scheduler"]
names = set()
for v in per.values(): names |= set(v)
print("metrics:", sorted(n for n in names if "Stall" in n)[:40])
for k, v in per.items():
    print(k, {w: v[w] for w in want if w in v})
PY
cd $OUT && tar czf r.tgz r && rm -rf r
