#!/usr/bin/env bash
# A = 5c09451 (bench-a); B = working tree (bench-b, selftest-b): IQ2_XXS
# decode GEMV on the tensor cores (gemv_iq2_xxs_tc) + one-launch HC-pre.
# Same call, 8-layer flash-q2.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r18/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|iq2|IQ2" $O/selftest.txt | head -20
[ -f /dev/shm/m8.gguf ] || $B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth.log 2>&1; tail -1 $O/synth.log
run() { local bin=$1 name=$2; shift 2; $bin run -m /dev/shm/m8.gguf --ctx 2048 --gen 32 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 60 "$@" > $O/$name.txt 2>&1; echo "$name rc=$? $(grep -E '^## ctx' $O/$name.md)"; }
run $B/bench-a a
run $B/bench-b b
run $B/bench-b b_notc --gemv-tensor-cores off
run $B/bench-a a2
run $B/bench-b b2
for f in a b b_notc; do echo "== $f"; sed -n '/decode step, per kernel/,/total/p' $O/$f.md | grep -E "gemv|hc_|total"; done
$B/bench-b products -m /dev/shm/m8.gguf > $O/products_b.md 2>&1; echo "products rc=$?"
$B/bench-b products -m /dev/shm/m8.gguf --gemv-tensor-cores off > $O/products_notc.md 2>&1
cat $O/products_b.md $O/products_notc.md | grep -E "routed gate|all"
cd $OUT && tar czf r.tgz r && rm -rf r
