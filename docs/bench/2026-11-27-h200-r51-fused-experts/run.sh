#!/usr/bin/env bash
# One binary (working tree: gemv_i8 with Q8_0 jobs and mixed formats, the
# shared expert's gate/up in the routed launch, SwiGLU staged by the down
# projections). Same call on one card: self-test; 8-layer products with the
# Q8_0 planes and fusion off / on; 8-layer decode with
#   base = --int8-q8 off --fused-experts off   (the previous main's launches)
#   q8   = --fused-experts off                  (Q8_0 planes, five expert launches)
#   all  = defaults                             (Q8_0 planes, three expert launches)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r51/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*-?
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
$B/selftest-b --data tests/data/tiny_a --oracle .device/oracle > $O/selftest.txt 2>&1; echo "selftest rc=$?"
grep -E "summary|FAIL|failed|fused|Q8_0 x3|2\^" $O/selftest.txt | head -24
$B/bench-b synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
$B/bench-b products -m /dev/shm/m8.gguf --int8-q8 off --fused-experts off > $O/products-base.txt 2>&1; echo "products base rc=$?"
$B/bench-b products -m /dev/shm/m8.gguf > $O/products-all.txt 2>&1; echo "products all rc=$?"
paste -d'\n' <(grep '^| [a-z]' $O/products-base.txt) <(grep '^| [a-z]' $O/products-all.txt) | head -40
run8() { local name=$1; shift; $B/bench-b run -m /dev/shm/m8.gguf --ctx 2048 --gen 16 --csv $O/$name.csv --breakdown $O/$name.md --deadline-s 60 "$@" > $O/$name.txt 2>&1; echo "$name rc=$?"; grep -E '^## ctx' $O/$name.md | sed 's/; prefill.*//'; }
run8 base1 --int8-q8 off --fused-experts off
run8 q8-1 --fused-experts off
run8 all1
run8 base2 --int8-q8 off --fused-experts off
run8 q8-2 --fused-experts off
run8 all2
for f in base1 all1; do echo "== $f"; grep -E "^\| (experts|gemv_|swiglu)" $O/$f.md | head -10; done
cd $OUT && tar czf r.tgz r && rm -rf r
