#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust tests, Python tests, and the
# adapter tests on real vLLM (CPU).
# Usage: scripts/test.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"

stage "cargo fmt --check"
cargo fmt --all --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "cargo test"
cargo test --workspace --locked

stage "python test environment"
VENV="$(venv_for test "$REPO/tests/requirements.txt")"
install_toktrace "$VENV"

stage "pytest"
"$VENV/bin/python" -m pytest -q "$REPO/tests/python"

stage "vLLM environment"
VLLM_VENV="$(bash "$REPO/scripts/setup-vllm.sh")"
"$VLLM_VENV/bin/python" -m pytest --version >/dev/null 2>&1 || "$VLLM_VENV/bin/pip" install --quiet "pytest==9.2.0"
install_toktrace "$VLLM_VENV"

stage "pytest on real vLLM"
"$VLLM_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_vllm.py"
stage_end
