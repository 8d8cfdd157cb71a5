"""Scenarios run on real vLLM (CPU) for the adapter tests; one engine per process.

Run with the vLLM venv's python, TOKTRACE_DIR set (so the .pth hook traces
it), and an output JSON path; it writes what vLLM itself returned, for the
tests to compare with the trace:

  python vllm_scenarios.py mixed OUT.json [--method fork|spawn]   (how the engine core starts)
  python vllm_scenarios.py interference OUT.json
  python vllm_scenarios.py preempt OUT.json

mixed         ≥ 16 concurrent requests of mixed prompt lengths, several sharing
              a long prefix (prefix caching on, as by default), logprobs=5,
              one request with n=2.
interference  chunked prefill off; 4 requests decode, then a prompt of
              thousands of tokens arrives (LLMEngine driven step by step).
preempt       a KV cache of a few blocks (num_gpu_blocks_override) and more
              work than fits, so the scheduler preempts.
topk          requests asking for no logprobs, for 2 and for 5, greedy and
              seeded, two prompts sent twice; run with TOKTRACE_TOPK_SAMPLE
              set or not (what the clients get must not change).
topk-serial   the same one request at a time (max_num_seqs=1): outputs
              comparable byte for byte between runs.
variance      one greedy prompt answered alone, then again in a batch of 32
              and in a batch where a long prompt is prefilled beside it
              (for the docs' batch_variance example).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "..", "fixtures", "tiny-llama")

WORDS = ("the little girl saw a red ball in the garden and she ran to get it . "
         "one day tom went to the park with his mother . ").split()


def text(n_words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def engine_kwargs(**over) -> dict:
    # disable_log_stats=False: vLLM then measures each request itself
    # (RequestOutput.metrics), which the analyzer's figures are checked against.
    kw = dict(model=os.path.abspath(MODEL), dtype="float32", max_model_len=512, seed=0,
              enforce_eager=True, max_num_seqs=32, disable_log_stats=False)
    kw.update(over)
    return kw


def dump_outputs(outputs, extra: dict | None = None) -> dict:
    reqs = []
    for ro in outputs:
        reqs.append({
            "request_id": ro.request_id,
            "prompt_token_ids": list(ro.prompt_token_ids or []),
            "num_cached_tokens": ro.num_cached_tokens,
            "outputs": [{
                "index": co.index,
                "token_ids": list(co.token_ids),
                "finish_reason": co.finish_reason,
                # One dict per position: token id -> [logprob, rank].
                "logprobs": None if co.logprobs is None else [
                    {str(t): [lp.logprob, lp.rank] for t, lp in pos.items()} for pos in co.logprobs
                ],
            } for co in ro.outputs],
            "metrics": vllm_metrics(ro),
        })
    return {"requests": reqs, **(extra or {})}


def vllm_metrics(ro) -> dict | None:
    """vLLM's own per-request measurements (engine-core stamps are CLOCK_MONOTONIC seconds)."""
    m = getattr(ro, "metrics", None)
    if m is None:
        return None
    keys = ("num_generation_tokens", "num_preemptions", "arrival_time", "queued_ts", "scheduled_ts",
            "first_token_ts", "last_token_ts", "first_token_latency")
    return {k: getattr(m, k, None) for k in keys}


def mixed() -> dict:
    from vllm import LLM, SamplingParams

    # Small blocks, so the shared prefix spans several full (cacheable) blocks.
    llm = LLM(**engine_kwargs(block_size=32))
    shared = text(60)  # a long common prefix: later requests hit the prefix cache
    prompts, params = [], []
    for i in range(18):
        if i % 3 == 0:
            p = shared + " " + text(3 + i, offset=i)
        else:
            p = text(4 + (i * 7) % 40, offset=i)
        prompts.append(p)
        params.append(SamplingParams(max_tokens=12 + i % 5, logprobs=5, temperature=0.8, seed=100 + i,
                                     n=2 if i == 5 else 1))
    t0 = time.monotonic()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return dump_outputs(outs, {"generate_s": time.monotonic() - t0})


def interference() -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(**engine_kwargs(enable_chunked_prefill=False, max_model_len=4096,
                              max_num_batched_tokens=4096))
    engine = llm.llm_engine
    # The decodes must still be running when the long prompt's prefill is
    # scheduled. The engine core runs in its own process, ahead of this loop
    # by however many steps the machine's load lets it, so the long prompt
    # goes in once this side has seen 10 tokens of every decode, and each
    # decode runs 150 tokens whatever the model says (greedy, the tiny model
    # stops some of them by EOS after ~45 on some releases).
    for i in range(4):
        engine.add_request(f"decode-{i}", text(8, offset=i),
                           SamplingParams(max_tokens=150, temperature=0.0, logprobs=1, ignore_eos=True))
    finished = {}
    seen: dict[str, int] = {}
    steps = 0
    long_added = False
    while engine.has_unfinished_requests() or not long_added:
        if not long_added and len(seen) == 4 and min(seen.values()) >= 10:
            engine.add_request("long-prompt", text(3000), SamplingParams(max_tokens=4, temperature=0.0))
            long_added = True
        for ro in engine.step():
            seen[ro.request_id] = len(ro.outputs[0].token_ids)
            if ro.finished:
                finished[ro.request_id] = ro
        steps += 1
        if steps > 1000:
            raise RuntimeError("interference scenario did not finish")
    return dump_outputs(finished.values(), {"steps": steps})


def preempt() -> dict:
    from vllm import LLM, SamplingParams

    # 24 blocks of 32 tokens (768) for 12 requests that each grow to ~100 tokens.
    llm = LLM(**engine_kwargs(num_gpu_blocks_override=24, block_size=32, enable_prefix_caching=False))
    prompts = [text(20 + i, offset=i) for i in range(12)]
    params = [SamplingParams(max_tokens=80, temperature=0.8, seed=7 + i, logprobs=2, ignore_eos=True)
              for i in range(12)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    return dump_outputs(outs)


def topk(serial: bool) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(**engine_kwargs(max_num_seqs=1 if serial else 32))
    prompts, params = [], []
    for i in range(12):
        # Prompts 0 and 1 come back as 6 and 7: same prompt, greedy.
        p = text(6 + 3 * (i % 6), offset=i % 6)
        asked = (None, None, 2, 5)[i % 4]
        greedy = i % 4 != 3
        prompts.append(p)
        params.append(SamplingParams(max_tokens=10 + i % 3 if i % 6 > 1 else 12, logprobs=asked,
                                     temperature=0.0 if greedy else 0.8, seed=None if greedy else 50 + i))
    outs = llm.generate(prompts, params, use_tqdm=False)
    result = dump_outputs(outs)
    for req, ro in zip(result["requests"], outs):
        for co_out, co in zip(req["outputs"], ro.outputs):
            co_out["text"] = co.text
            co_out["cumulative_logprob"] = co.cumulative_logprob
        req["asked_logprobs"] = ro.outputs[0].logprobs is not None
    return result


def variance() -> dict:
    from vllm import LLM, SamplingParams

    # No prefix cache: every copy computes its prompt itself, chunked as its
    # batch allows (a budget of 64 tokens a step).
    llm = LLM(**engine_kwargs(max_model_len=2048, max_num_batched_tokens=64, enable_prefix_caching=False))
    greedy = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    prompt = text(24)
    outs = llm.generate([prompt], greedy, use_tqdm=False)
    others = [text(8 + i, offset=i) for i in range(31)]
    outs += llm.generate([prompt, *others], greedy, use_tqdm=False)
    outs += llm.generate([text(1500, offset=3), prompt], greedy, use_tqdm=False)
    return dump_outputs(outs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["mixed", "interference", "preempt", "topk", "topk-serial", "variance"])
    ap.add_argument("out")
    ap.add_argument("--method", choices=["fork", "spawn"], default="spawn",
                    help="how vLLM starts its engine-core process")
    args = ap.parse_args()
    started_by = []
    if args.method == "fork":
        # vLLM's CPU platform forces spawn for its processes (platforms/cpu.py),
        # while GPU servers usually fork their engine core. To exercise the fork
        # path here, the engine core is started from a fork context; its model
        # worker is still spawned by the engine core, as on the CPU normally.
        import multiprocessing

        import vllm.v1.engine.utils as engine_utils

        def fork_context():
            started_by.append("fork")
            return multiprocessing.get_context("fork")

        engine_utils.get_mp_context = fork_context
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = {"mixed": mixed, "interference": interference, "preempt": preempt,
              "topk": lambda: topk(serial=False), "topk-serial": lambda: topk(serial=True),
              "variance": variance}[args.scenario]()
    result["engine_core_started_by"] = "fork" if started_by else "spawn"
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
