#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust tests, Python tests, and the
# adapter tests on real vLLM and real SGLang (CPU).
# Usage: scripts/test.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"

stage "cargo fmt --check"
cargo fmt --all --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Release: the CLI the wheel bundles is built in release too, so polars compiles
# for one profile only.
stage "cargo test"
cargo test --workspace --locked --release
# The wheel bundles this very binary instead of building it again.
export TOKTRACE_PREBUILT_CLI="$CARGO_TARGET_DIR/release/toktrace"

stage "python test environment"
VENV="$(venv_for test "$REPO/tests/requirements.txt")"
install_toktrace "$VENV"

stage "chromium (renders the HTML report in a test)"
ensure_chromium

stage "pytest"
"$VENV/bin/python" -m pytest -q "$REPO/tests/python"

stage "vLLM environment"
VLLM_VENV="$(bash "$REPO/scripts/setup-vllm.sh")"
"$VLLM_VENV/bin/python" -m pytest --version >/dev/null 2>&1 || "$VLLM_VENV/bin/pip" install --quiet "pytest==9.2.0"
install_toktrace "$VLLM_VENV"

stage "pytest on real vLLM"
"$VLLM_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_vllm.py"

stage "SGLang environment"
SGLANG_VENV="$(bash "$REPO/scripts/setup-sglang.sh")"
install_toktrace "$SGLANG_VENV"

stage "pytest on real SGLang"
"$SGLANG_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_sglang.py"
stage_end
