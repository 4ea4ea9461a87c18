#!/usr/bin/env bash
# Decode attention in one launch, keys by cp.async, 2 (b2) or 4 (b4) heads
# per warp; A = 77c7e16 (bench-a: attend_part + attend_combine). Same call:
# self-test of b2 and b4; 8-layer flash-q2 decode at 2K and 16K, A b2 b4 twice.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH DS4_KERNEL_CACHE=/tmp/ds4k
mkdir -p /tmp/bin && for f in .device/r56/*.xz; do python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" $f /tmp/bin/$(basename $f .xz); done; chmod +x /tmp/bin/*
B=/tmp/bin; O=$OUT/r; mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $O/card.txt; date -u | tee -a $O/card.txt
for v in b2 b4; do $B/selftest-$v --data tests/data/tiny_a --oracle .device/oracle > $O/selftest-$v.txt 2>&1; echo "selftest $v rc=$?"; grep -E "summary|FAIL|failed|stage attend \(" $O/selftest-$v.txt | head -8; done
[ -f /dev/shm/m8.gguf ] || $B/bench-b2 synth --preset flash-q2 --layers 8 -o /dev/shm/m8.gguf > $O/synth8.log 2>&1
run8() { local v=$1 tag=$2; $B/bench-$v run -m /dev/shm/m8.gguf --ctx 2048,16384 --gen 16 --csv $O/$tag.csv --breakdown $O/$tag.md --deadline-s 60 > $O/$tag.txt 2>&1; echo "$tag rc=$?"; grep -E '^## ctx' $O/$tag.md | sed 's/; prefill.*//'; }
for r in 1 2; do run8 a a$r; run8 b2 b2-$r; run8 b4 b4-$r; done
for f in a1 b2-1 b4-1; do echo "== $f"; grep -E "^\| (attend|attend_decode|attend_part|attend_combine) " $O/$f.md | head -6; done
cd $OUT && tar czf r.tgz r && rm -rf r
