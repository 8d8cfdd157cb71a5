"""What TOKTRACE_TOPK_SAMPLE costs vLLM's sampler, on this CPU, at a
production vocabulary size.

vLLM computes logprobs for the whole batch as soon as one request in it asks
(``SamplingMetadata.max_num_logprobs`` is the batch's largest ask): a
log-softmax over every row's vocabulary, a top-K, a gather, and the lists
the engine core slices per request (``LogprobsTensors.tolists``). So a
fraction ``r`` of sampled requests costs the batch the full price on every
step where at least one of its B requests is sampled: 1 − (1 − r)^B of
steps. The tiny test model's 1,024-token vocabulary hides this; here the
logits are random rows of 128,256 (Llama 3) and 151,936 (Qwen 2) entries.

Each configuration runs the real ``vllm.v1.sample.sampler.Sampler`` on
greedy requests (the cheapest sampling, so the added share is the largest),
steps drawing each request's choice independently at the rate, interleaved
with rate 0 step for step. Reported: the sampler's median time per step at
rate 0, the time the rate adds (median of the paired differences, with the
share of steps that computed logprobs), and tokens per second through the
sampler alone. A GPU does this work far faster; it is not measured here.

Usage (in a vLLM venv): python benches/topk_sample_cost.py [--steps 40] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Any

RATES = (0.0, 0.01, 0.1, 1.0)
BATCHES = (32, 256)
VOCABS = (128_256, 151_936)
K = 5


def metadata(batch: int, num_logprobs: int | None) -> Any:
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    return SamplingMetadata(
        temperature=None, all_greedy=True, all_random=False, top_p=None, top_k=None, generators={},
        max_num_logprobs=num_logprobs, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch), presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.ones(batch), output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors())


def one_step(sampler: Any, logits: Any, meta: Any) -> float:
    """Seconds for one sampler pass and the per-request lists the engine core reads."""
    t0 = time.perf_counter()
    out = sampler(logits, meta)
    out.sampled_token_ids.tolist()
    if out.logprobs_tensors is not None:
        out.logprobs_tensors.tolists()
    return time.perf_counter() - t0


def measure(vocab: int, batch: int, rate: float, steps: int, rng: random.Random) -> dict[str, Any]:
    import torch
    from vllm.v1.sample.sampler import Sampler

    sampler = Sampler()
    logits = torch.randn(batch, vocab, dtype=torch.float32)
    plain = metadata(batch, None)
    asking = metadata(batch, K)
    base, added, with_lp = [], [], 0
    for _ in range(3):  # warm the allocator and the kernels
        one_step(sampler, logits, plain)
        one_step(sampler, logits, asking)
    for _ in range(steps):
        any_sampled = any(rng.random() < rate for _ in range(batch))
        with_lp += any_sampled
        # Paired, order alternating: the machine's drift cancels.
        if rng.random() < 0.5:
            a = one_step(sampler, logits, plain)
            b = one_step(sampler, logits, asking if any_sampled else plain)
        else:
            b = one_step(sampler, logits, asking if any_sampled else plain)
            a = one_step(sampler, logits, plain)
        base.append(a)
        added.append(b - a)
    step = statistics.median(base)
    extra = statistics.mean(added)  # a mix of zero and full-price steps: the mean is the cost
    return {
        "vocab": vocab, "batch": batch, "rate": rate, "steps": steps,
        "steps_with_logprobs": with_lp / steps,
        "expected_share": 1 - (1 - rate) ** batch,
        "sampler_ms": step * 1e3, "added_ms": extra * 1e3, "added_pct": 100 * extra / step,
        "tokens_per_s_off": batch / step, "tokens_per_s_on": batch / (step + extra),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="paired steps per configuration")
    ap.add_argument("--out", help="write the figures here as JSON")
    args = ap.parse_args()
    import torch
    import vllm

    rng = random.Random(0)
    rows = []
    for vocab in VOCABS:
        for batch in BATCHES:
            for rate in RATES:
                row = measure(vocab, batch, rate, args.steps, rng)
                rows.append(row)
                print(f"vocab {vocab:>7} batch {batch:>3} rate {rate:<5} sampler {row['sampler_ms']:8.2f} ms"
                      f"  adds {row['added_ms']:8.2f} ms ({row['added_pct']:6.1f} %)"
                      f"  logprobs on {100 * row['steps_with_logprobs']:5.1f} % of steps"
                      f"  {row['tokens_per_s_off']:9.0f} -> {row['tokens_per_s_on']:9.0f} tokens/s",
                      file=sys.stderr, flush=True)
    result = {"vllm": vllm.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "k": K, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    else:
        json.dump(result, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
