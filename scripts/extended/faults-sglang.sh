# SGLang's HTTP server under long streaming load, with exact token accounting.
# The soak of tests/engines/test_sglang_faults.py (the same accounting as the
# vLLM soak in faults-vllm): 12 streaming clients against `launch_server`
# with a ring of 8 records drained every 200 ms and 64 KiB segments (a ring of
# 20 did not always overflow: SGLang's adapter flushes whenever the scheduler
# goes idle; tests/engines/served.py says more); at the
# end, every token a client received is traced with its logprob or counted
# dropped. Keeps its figures (clients, tokens/s, drops) for docs/reliability.md.

SUITE_SOURCES=(tests/engines/test_sglang_faults.py tests/engines/served.py tests/trace_tokens.py
               tests/engines/sgl_kernel_stub scripts/setup-sglang.sh fixtures/sglang-cpu fixtures/tiny-llama)

SGLANG_RELEASE=0.5.23

suite_items() {
    printf '%s\n' soak-20min
}

suite_run() {
    local item="$1" out="$2"
    local venv junit figures minutes rc
    venv="$(bash "$REPO/scripts/setup-sglang.sh" --version "$SGLANG_RELEASE")"
    install_toktrace "$venv"
    minutes="${item#soak-}"
    junit="$(mktemp --suffix=.xml)"
    figures="$(mktemp --suffix=.jsonl)"
    set +e
    TOKTRACE_SOAK_SECONDS=$(( ${minutes%min} * 60 )) TOKTRACE_FIGURES="$figures" \
        "$venv/bin/python" -m pytest -q -s "$REPO/tests/engines/test_sglang_faults.py" --junitxml="$junit"
    rc=$?
    set -e
    python3 "$REPO/scripts/junit_summary.py" "$junit" --set "item=$item" --set engine=sglang \
        --set "engine_version=$SGLANG_RELEASE" > "$out.tests"
    python3 - "$out.tests" "$figures" > "$out" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
data["figures"] = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
json.dump(data, sys.stdout, indent=1)
PY
    rm -f "$junit" "$figures" "$out.tests"
    return "$rc"
}
