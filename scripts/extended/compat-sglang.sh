# The SGLang compatibility matrix: every release in the adapter's table, on its real engine code.
# Each release runs the whole real-engine suite, tests/engines/test_sglang.py,
# in that release's own environment (scripts/setup-sglang.sh --version, its
# pins in fixtures/sglang-cpu/): every token id, logprob and top-K against
# SGLang's own output in both scheduler loops, chunked prefill and radix-cache
# hits, a long prefill stalling the decodes, MIXED batches, retractions, a
# request aborted while queued and one rejected at admission, two DP
# schedulers each tagged with its rank, the HTTP server with a request found
# by its trace id, the plugin entry point, and `toktrace doctor`.
# Venvs of releases Tier 1 does not run are removed afterwards (7-8 GB each)
# unless TOKTRACE_KEEP_VENVS=1.

SUITE_SOURCES=(scripts/setup-sglang.sh tests/engines/test_sglang.py tests/engines/sglang_scenarios.py
               tests/engines/sgl_kernel_stub tests/engines/vllm_scenarios.py tests/trace_tokens.py
               fixtures/tiny-llama fixtures/sglang-cpu)

# Releases Tier 1 (.ci/run) also runs: their venvs stay in the cache.
TIER1_SGLANG=(0.5.23 0.5.13)

suite_items() {
    local patch
    for patch in $(seq 13 23); do echo "0.5.$patch"; done
}

suite_run() {
    local release="$1" out="$2"
    local venv junit rc
    venv="$(bash "$REPO/scripts/setup-sglang.sh" --version "$release")"
    install_toktrace "$venv"
    junit="$(mktemp --suffix=.xml)"
    set +e
    "$venv/bin/python" -m pytest -q "$REPO/tests/engines/test_sglang.py" --junitxml="$junit"
    rc=$?
    set -e
    python3 "$REPO/scripts/junit_summary.py" "$junit" \
        --set engine=sglang --set release="$release" \
        --set "proof=real CPU run (sglang $release, tests/engines/test_sglang.py)" \
        --set "engine_version=$("$venv/bin/python" -c "from importlib.metadata import version; print(version('sglang'))")" \
        > "$out"
    rm -f "$junit"
    if [ "${TOKTRACE_KEEP_VENVS:-0}" != 1 ] && ! printf '%s\n' "${TIER1_SGLANG[@]}" | grep -qxF "$release"; then
        rm -rf "$venv"
    fi
    return "$rc"
}
