#!/usr/bin/env bash
# End-to-end test of `ds4 serve` through the official OpenAI and Anthropic
# Python SDKs (tests/e2e). Needs network access to PyPI the first time.
#
#   scripts/e2e_server.sh [pytest args...]
#
# 1. a venv in tests/e2e/.venv with openai 3.57, anthropic 2.14 and pytest;
# 2. `ds4` built with the test-only `test-script` feature into its own target
#    dir (target/e2e; a debug build: the feature refuses release builds);
# 3. the tiny synthetic model (target/e2e/tiny.gguf, made once);
# 4. pytest, which starts and stops its own servers on free 127.0.0.1 ports.
# Exits non-zero on any failure, including "no tests collected".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=tests/e2e/.venv
TARGET=target/e2e
PY=${PYTHON:-python3}

echo "== e2e: python venv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import openai, anthropic, pytest' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        'openai==3.57.*' 'anthropic==2.14.*' 'pytest>=8,<10'
fi
"$VENV/bin/python" -c 'import openai, anthropic; print("openai", openai.__version__, "anthropic", anthropic.__version__)'

echo "== e2e: cargo build -p ds4-cli --features test-script (target dir $TARGET)"
# Dev profile: the feature needs debug assertions (the workspace's dev
# profile already optimizes dependencies).
CARGO_TARGET_DIR=$TARGET cargo build --quiet -p ds4-cli --features test-script \
    --config 'profile.dev.debug=0'
BIN=$TARGET/debug/ds4

MODEL=$TARGET/tiny.gguf
if [ ! -s "$MODEL" ]; then
    echo "== e2e: synthesizing the tiny model ($MODEL)"
    "$BIN" gguf synth --preset tiny -o "$MODEL" --force
fi

LOGS=$TARGET/logs
mkdir -p "$LOGS"
echo "== e2e: pytest tests/e2e (server logs in $LOGS)"
set +e
DS4_BIN=$BIN DS4_MODEL=$MODEL DS4_E2E_LOGS=$LOGS \
    timeout 1200 "$VENV/bin/python" -m pytest tests/e2e -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "e2e: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
