# The vLLM compatibility matrix: the real-engine suite (tests/engines/test_vllm.py) on every vLLM release with a CPU wheel.
# Each item builds that release's venv (scripts/setup-vllm.sh --version),
# installs the toktrace wheel and runs the whole real-vLLM suite: every
# token id, logprob, rank and top-K against vLLM's own output (fork and
# spawn), step composition and cache hits, interference, preemption,
# finishes, and `vllm serve` with the API server and engine core on one
# clock and a request found by its trace id. Venvs of releases Tier 1 does
# not run are removed afterwards (6+ GB each) unless TOKTRACE_KEEP_VENVS=1.

SUITE_SOURCES=(scripts/setup-vllm.sh tests/engines tests/trace_tokens.py fixtures/tiny-llama fixtures/vllm-cpu)

# Releases Tier 1 (.ci/run) also runs: their venvs stay in the cache.
TIER1_VLLM=(0.32.0 0.26.0)

suite_items() {
    printf '%s\n' 0.26.0 0.27.0 0.27.1 0.28.0 0.29.0 0.30.0 0.31.0 0.32.0
}

suite_run() {
    local release="$1" out="$2"
    local venv junit rc
    venv="$(bash "$REPO/scripts/setup-vllm.sh" --version "$release")"
    "$venv/bin/python" -m pytest --version >/dev/null 2>&1 || "$venv/bin/pip" install --quiet "pytest==9.2.0"
    install_toktrace "$venv"
    junit="$(mktemp --suffix=.xml)"
    set +e
    "$venv/bin/python" -m pytest -q "$REPO/tests/engines/test_vllm.py" --junitxml="$junit"
    rc=$?
    set -e
    python3 "$REPO/scripts/junit_summary.py" "$junit" \
        --set engine=vllm --set release="$release" \
        --set "proof=real CPU run (vllm-cpu $release, tests/engines/test_vllm.py)" \
        --set "engine_version=$(cd / && "$venv/bin/python" -c 'import vllm; print(vllm.__version__)')" > "$out"
    rm -f "$junit"
    if [ "${TOKTRACE_KEEP_VENVS:-0}" != 1 ] && ! printf '%s\n' "${TIER1_VLLM[@]}" | grep -qxF "$release"; then
        rm -rf "$venv"
    fi
    return "$rc"
}
