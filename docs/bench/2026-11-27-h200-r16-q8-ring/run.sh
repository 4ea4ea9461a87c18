#!/usr/bin/env bash
# A = 5c09451 (bench-a); B = working tree (bench-b, selftest-b): Q8_0 GEMV
# through a bulk-copy shared-memory ring (gemv_q8_0_ring) + L2 weight prefetch
# before the dependent-launch wait. Same call, 8-layer flash-q2.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r16/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed" $O/selftest.txt | head
[ -f /dev/shm/m8.gguf ] || $B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 60 "$@" > $O/$name.txt 2>&1; echo "$name rc=$? $(grep -E '^## ctx' $O/$name.md)"; }
run $B/bench-a a
run $B/bench-b b
run $B/bench-b b_noring --gemv-ring off
run $B/bench-b b_off --gemv-ring off --weight-prefetch off
run $B/bench-a a2
run $B/bench-b b2
for f in a b b_noring; do echo "== $f"; sed -n '/decode step, per kernel/,/total/p' $O/$f.md | grep -E "gemv|hc_dots|total"; done
$B/bench-b products -m /dev/shm/m8.gguf > $O/products_b.md 2>&1; echo "products rc=$?"
$B/bench-b products -m /dev/shm/m8.gguf --gemv-ring off --weight-prefetch off > $O/products_off.md 2>&1
cat $O/products_b.md $O/products_off.md | grep -E "^\||copy"
cd $OUT && tar czf r.tgz r && rm -rf r
