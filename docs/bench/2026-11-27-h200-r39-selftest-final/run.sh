#!/usr/bin/env bash
# The self-test of the final tree (selftest-b): indexer kernels moved to
# kernels/indexer.cu, and a new stage check of batch attention through
# attend_part (the path with tensor_core_attention off).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r39/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|attend" $O/selftest.txt | head -30
cd $OUT && tar czf r.tgz r && rm -rf r
