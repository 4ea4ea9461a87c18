#!/usr/bin/env bash
# CUDA smoke run of the ds4 CLI on the GPU box: one-shot on the tiny model
# (CPU and CUDA), then `ds4 bench` on a 2-layer production-width q2 model.
#
# Build here, strip, and carry the binary to the device machine:
#   cargo build --release -p ds4-cli --features cuda
#   mkdir -p target/gpu && strip -o target/gpu/ds4 target/release/ds4
#   (device run, carry target/gpu)  bash scripts/cli_gpu_smoke.sh
# CSV and SVG files land in $OUT (or ./cli-gpu-out).
set -euo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
D=${DS4:-target/gpu/ds4}
OUT=${OUT:-cli-gpu-out}
M=${MODELS:-/dev/shm}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv
"$D" gguf synth --preset tiny -o "$M/tiny.gguf" --force
for b in cpu cuda; do
    "$D" -m "$M/tiny.gguf" --backend "$b" -p "hello" -n 16 --temp 0 --nothink
done
"$D" gguf synth --preset flash-q2 --layers 2 -o "$M/q2l2.gguf" --force
"$D" bench -m "$M/q2l2.gguf" --backend cuda --frontiers 512,1024,2048,4096,8192 -n 32 \
    --csv "$OUT/cuda_q2l2.csv" --svg "$OUT/cuda_q2l2.svg"
"$D" bench -m "$M/q2l2.gguf" --backend cpu --frontiers 128,256,512 -n 8 \
    --csv "$OUT/cpu_q2l2.csv" --svg "$OUT/cpu_q2l2.svg"
head -n 20 "$OUT"/*.csv
