#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust tests, Python tests.
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
stage_end
