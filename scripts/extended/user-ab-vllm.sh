# Real vLLM on the CPU timed as a user times it (benches/vllm_user_ab.py): tracing off, on and metadata-only in separate, interleaved processes.
# The whole offline run (64 concurrent requests, half with top-5 logprobs),
# engine core in its own process, drain threads and frontend included: the
# figure the in-situ goal must also hold in (within run-to-run noise).

SUITE_SOURCES=(benches/vllm_user_ab.py scripts/setup-vllm.sh fixtures/vllm-cpu fixtures/tiny-llama)

USER_AB_ROUNDS="${USER_AB_ROUNDS:-6}"

suite_items() {
    printf '%s\n' 0.32.0
}

suite_run() {
    local release="$1" out="$2"
    local venv
    venv="$(bash "$REPO/scripts/setup-vllm.sh" --version "$release")"
    install_toktrace "$venv"
    "$venv/bin/python" "$REPO/benches/vllm_user_ab.py" --rounds "$USER_AB_ROUNDS" --json "$out"
}
