#!/usr/bin/env bash
# Runs ds4-quant's tests (NEON dot kernels against the scalar reference, and
# everything else) for aarch64 under qemu user-mode emulation.
# Installs the aarch64 Rust target, cross linker and qemu when missing; if
# they cannot be had, it says so and exits 0 (the x86 tests still ran).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

have_tools() {
    rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$' &&
        command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null
}

if ! have_tools; then
    echo "neon_check: installing the aarch64 target, cross gcc and qemu-user"
    rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1
    if command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross) >/dev/null 2>&1
    fi
fi
if ! have_tools; then
    echo "neon_check: SKIPPED (no aarch64 target, cross gcc or qemu-aarch64 on this machine)"
    exit 0
fi

set -e
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test -p ds4-quant --target aarch64-unknown-linux-gnu
