# What TOKTRACE_TOPK_SAMPLE costs vLLM's sampler at production vocabulary sizes (benches/topk_sample_cost.py).
# vLLM's real Sampler on this CPU, random logits of 128,256 and 151,936
# entries, batch 32 and 256, rates 0, 0.01, 0.1 and 1: the time per step
# the rate adds, paired step for step with rate 0. One item per vLLM release.

SUITE_SOURCES=(benches/topk_sample_cost.py scripts/setup-vllm.sh)

suite_items() {
    echo vllm-0.32.0
}

suite_run() {
    local item="$1" out="$2"
    local venv
    venv="$(bash "$REPO/scripts/setup-vllm.sh" --version "${item#vllm-}")"
    "$venv/bin/python" "$REPO/benches/topk_sample_cost.py" --steps "${TOPK_COST_STEPS:-40}" --out "$out"
}
