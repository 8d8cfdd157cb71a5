# What tracing adds to vLLM's own time per step (benches/vllm_insitu.py) in the scheduler-level harness, beside the OpenTelemetry SDK.
# The in-situ goal of the performance page: per process (engine core,
# frontend), batch 32/128/256, top-5 logprobs for all or none, caches warm
# and evicted, tracing off / toktrace / the OTel SDK in interleaved runs of one
# process (--method paired). One item per vLLM release and CPython: harness-X.Y.Z-py3.N.

SUITE_SOURCES=(benches/vllm_insitu.py tests/engines/vllm_harness scripts/setup-vllm-gpu-wheel.sh
               fixtures/vllm-gpu-wheel fixtures/tiny-llama)

INSITU_ROUNDS="${INSITU_ROUNDS:-10}"

suite_items() {
    printf "%s\n" harness-0.34.0-py3.11 harness-0.34.0-py3.12 harness-0.34.0-py3.13
}

suite_run() {
    local item="$1" out="$2"
    local release="${item#harness-}"
    local minor="${release##*-py3.}"
    release="${release%-py3.*}"
    local venv
    venv="$(TOKTRACE_PYTHON="$(python_for "$minor")" bash "$REPO/scripts/setup-vllm-gpu-wheel.sh" --version "$release")"
    install_toktrace "$venv"
    "$venv/bin/python" "$REPO/benches/vllm_insitu.py" --rounds "$INSITU_ROUNDS" --json "$out"
}
