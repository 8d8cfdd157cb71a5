#!/usr/bin/env bash
# The whole test suite (Tier 1: what must never regress): formatting, lints,
# Rust tests, the Python package tests on CPython 3.11-3.13 with direct reads
# on and off, and the adapter tests on real engine code: vLLM 0.32 and 0.26 on
# CPU, vLLM 0.34 in the scheduler-level harness, SGLang 0.5.23 and 0.5.13 on
# CPU; the fleet questions on Spark. The long runs (every release, soaks,
# benchmarks) are Tier 2:
# scripts/extended.sh.
# Usage: scripts/test.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"

stage "cargo fmt --check"
cargo fmt --all --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "cargo doc (no warnings: every intra-doc link resolves)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

# Release: the CLI the wheel bundles is built in release too, so polars compiles
# for one profile only.
stage "cargo test"
cargo test --workspace --locked --release
# The wheel bundles this very binary instead of building it again.
export TOKTRACE_PREBUILT_CLI="$CARGO_TARGET_DIR/release/toktrace"

stage "chromium and tmux (render the HTML report and the viewer in tests)"
ensure_chromium

# The package tests on every CPython the probe reads objects of directly
# (its sealed layouts: bindings-python/src/layout.rs), with direct reads on
# and off: the two paths must give the same records.
for minor in 11 12 13; do
    stage "python 3.$minor test environment"
    PY="$(python_for "$minor")"
    VENV="$(venv_for "test-py3$minor" "$REPO/tests/requirements.txt" "$PY")"
    install_toktrace "$VENV"

    stage "pytest (CPython 3.$minor, direct reads)"
    "$VENV/bin/python" -m pytest -q "$REPO/tests/python"

    stage "pytest (CPython 3.$minor, C API only: TOKTRACE_DIRECT_READS=0)"
    TOKTRACE_DIRECT_READS=0 "$VENV/bin/python" -m pytest -q "$REPO/tests/python"
done

# The fleet questions on Spark SQL, equal to `toktrace fleet`'s (DuckDB's
# equality ran with the package tests above).
stage "Prometheus (Debian's), for toktrace watch"
ensure_prometheus
cargo build --release --locked -p toktrace-workload

stage "pytest: toktrace watch scraped by Prometheus, spans to an OTLP receiver"
TOKTRACE_WORKLOAD="$CARGO_TARGET_DIR/release/toktrace-workload" \
    "$(venv_for "test-py311" "$REPO/tests/requirements.txt" "$(python_for 11)")/bin/python" -m pytest -q "$REPO/tests/live"

stage "Spark environment (PySpark, Java 17)"
ensure_java
SPARK_VENV="$(venv_for fleet-spark "$REPO/tests/fleet/requirements-spark.txt" "$(python_for 11)")"
install_toktrace "$SPARK_VENV"

stage "pytest: fleet questions on Spark"
"$SPARK_VENV/bin/python" -m pytest -q "$REPO/tests/fleet/test_spark.py"

stage "vLLM environment"
VLLM_VENV="$(bash "$REPO/scripts/setup-vllm.sh")"
"$VLLM_VENV/bin/python" -m pytest --version >/dev/null 2>&1 || "$VLLM_VENV/bin/pip" install --quiet "pytest==9.2.0"
install_toktrace "$VLLM_VENV"

stage "pytest on real vLLM"
"$VLLM_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_vllm.py" "$REPO/tests/engines/test_vllm_topk.py"

# `vllm serve` under a minute of streaming load with a tiny ring, killed
# mid-stream, and on a tmpfs that fills: exact token accounting each time.
# Tier 2 runs the same tests long: scripts/extended.sh faults-vllm.
stage "pytest: real vLLM under load, killed, out of disk"
"$VLLM_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_vllm_faults.py"

# The first release of the vLLM layout line (0.26-0.32 share one layout):
# the scenarios that check every token, step and finish against vLLM's own
# output, and `vllm serve` (a shim of its own before 0.32). The rest of the
# line runs in Tier 2: scripts/extended.sh compat-vllm.
stage "vLLM 0.26.0 environment"
OLD_VLLM_VENV="$(bash "$REPO/scripts/setup-vllm.sh" --version 0.26.0)"
"$OLD_VLLM_VENV/bin/python" -m pytest --version >/dev/null 2>&1 || "$OLD_VLLM_VENV/bin/pip" install --quiet "pytest==9.2.0"
install_toktrace "$OLD_VLLM_VENV"

stage "pytest on real vLLM 0.26.0 (engine core spawned)"
"$OLD_VLLM_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_vllm.py" -k "not fork"

# The newest vLLM release has no CPU wheel: its real Scheduler, engine-core
# step and output processor run with a stand-in model runner
# (tests/engines/vllm_harness), async scheduling on and off.
stage "vLLM 0.34.0 harness environment (the real GPU wheel, a stand-in model runner)"
HARNESS_VENV="$(bash "$REPO/scripts/setup-vllm-gpu-wheel.sh" --version 0.34.0)"
install_toktrace "$HARNESS_VENV"

stage "pytest: vLLM 0.34.0 in the scheduler-level harness"
"$HARNESS_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_vllm_harness.py"

stage "SGLang environment"
SGLANG_VENV="$(bash "$REPO/scripts/setup-sglang.sh")"
install_toktrace "$SGLANG_VENV"

stage "pytest on real SGLang"
"$SGLANG_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_sglang.py" "$REPO/tests/engines/test_sglang_topk.py"

# SGLang's HTTP server under load (tests/engines/test_sglang_faults.py) runs in
# Tier 2 (scripts/extended.sh faults-sglang), for many minutes.

# The first release of the SGLang layout line (0.5.13-0.5.23 share one
# layout, 0.5.13-0.5.20 with shims of their own: ranks on Scheduler.ps,
# unrun aborts seen at send_output): every token in both scheduler loops,
# retractions with a request aborted while queued and one rejected at
# admission, two DP schedulers tagged with their ranks, `toktrace doctor`.
# The rest of the line runs in Tier 2: scripts/extended.sh compat-sglang.
stage "SGLang 0.5.13 environment"
OLD_SGLANG_VENV="$(bash "$REPO/scripts/setup-sglang.sh" --version 0.5.13)"
install_toktrace "$OLD_SGLANG_VENV"

stage "pytest on real SGLang 0.5.13"
"$OLD_SGLANG_VENV/bin/python" -m pytest -q "$REPO/tests/engines/test_sglang.py" \
    -k "every_token_matches or retractions or each_dp_scheduler or doctor"
stage_end
