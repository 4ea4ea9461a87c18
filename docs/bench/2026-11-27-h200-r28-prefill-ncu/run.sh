#!/usr/bin/env bash
# Nsight Compute on the prefill kernels of r27's working tree (bench-b):
# the tensor-core GEMMs and attend_heads of the first 2048-token chunk,
# 8-layer flash-q2. Pipe utilisation, stall reasons, issue rates.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r27/bench-b.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
$NCU --clock-control none -k regex:"gemm_q8_0|gemm_iq2_xxs|gemm_q2_k|attend_heads" --launch-count 9 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section InstructionStats --section LaunchStats \
  --csv --page details $B/bench-b run -m /dev/shm/m8.gguf --ctx 2048 --gen 2 --deadline-s 60 > $O/ncu.csv 2> $O/ncu.err; echo "ncu rc=$?"
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
    key = (r[ix["ID"]], r[ix["Kernel Name"]][:16], r[ix["Grid Size"]])
    per.setdefault(key, {})[r[ix["Section Name"]][:6] + ":" + r[ix["Metric Name"]]] = r[ix["Metric Value"]]
for k, v in per.items():
    print(k)
    for m, val in v.items():
        if any(w in m for w in ["Duration", "Throughput", "Occupancy", "Registers", "Stall", "Issued", "Pipe", "Eligible", "Executed Ipc", "Issue Slots", "SM Busy", "Active Warps"]):
            print("   ", m, val)
PY
cd $OUT && tar czf r.tgz r && rm -rf r
