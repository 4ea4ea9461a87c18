#!/usr/bin/env bash
# Compiles every ds4 CUDA kernel with NVRTC 13.0 — no GPU, no CUDA toolkit —
# and fails on any compile error or missing kernel. NVRTC comes from the
# pinned PyPI wheels in a venv (created on first use; newer NVRTC emits PTX
# the 580 driver on the GPU box cannot load, so keep these pins at 13.0.x).
#
#   scripts/nvrtc_check.sh            # compute_90a and sm_90a
#   scripts/nvrtc_check.sh compute_80 # other targets
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DS4_NVRTC_VENV:-$root/target/nvrtc-venv}"

if ! compgen -G "$venv/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13" >/dev/null; then
    echo "nvrtc_check: creating $venv with nvidia-cuda-nvrtc 13.0.88" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96
fi
lib="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13/lib)"

cd "$root"
cargo build --quiet -p ds4-cuda --bin ds4-nvrtc-check
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$root/target/debug/ds4-nvrtc-check" "$@"
# The same compile as a cargo test, so it also counts in the test summary.
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --quiet -p ds4-cuda --test without_gpu
