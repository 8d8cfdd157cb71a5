"""Real vLLM (CPU) throughput with tracing off and on, interleaved in one run.

One engine, in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, so the
recorder can be switched between rounds); each round runs the same batch
once with tracing off and once on, in alternating order, and records output
tokens/s. Reported: the on/off throughput ratio per round with its mean and
spread, and the precise figure — the adapter's own time per step measured
inside its hooks, over the step time.

Usage (vLLM venv with toktrace installed, see scripts/setup-vllm.sh):
  TOKTRACE_DIR=/tmp/tt-ab python benches/vllm_ab.py [--rounds 6] [--requests 32] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--logprobs", type=int, default=5, help="top logprobs per token; -1 asks for none")
    args = ap.parse_args()
    if not os.environ.get("TOKTRACE_DIR"):
        print("vllm_ab: set TOKTRACE_DIR (the 'on' rounds write there)", file=sys.stderr)
        return 2
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vllm import LLM, SamplingParams

    import toktrace
    from toktrace.adapters.vllm import v0_32 as adapter

    llm = LLM(model=os.path.join(HERE, "..", "fixtures", "tiny-llama"), dtype="float32",
              max_model_len=512, enforce_eager=True, block_size=32, seed=0)
    rec = toktrace.recorder()
    assert rec is not None, "the adapter did not activate"
    words = "the little girl saw a red ball in the garden and she ran to get it".split()
    prompts = [" ".join(words[i % len(words):] + words[: i % len(words)]) for i in range(args.requests)]
    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True, temperature=0.8,
                            logprobs=args.logprobs if args.logprobs >= 0 else None)

    def run(on: bool) -> float:
        rec.enabled = on
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        took = time.perf_counter() - t0
        return sum(len(o.outputs[0].token_ids) for o in outs) / took

    run(False)  # warm-up, not counted
    ratios, off_all, on_all = [], [], []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        tps = {mode: run(mode) for mode in order}
        off_all.append(tps[False])
        on_all.append(tps[True])
        ratios.append(tps[True] / tps[False])
        print(f"round {r}: off {tps[False]:8.1f} tok/s   on {tps[True]:8.1f} tok/s   on/off {ratios[-1]:.3f}")
    rec.enabled = True
    c = adapter.cost()
    print(f"throughput on/off: mean {statistics.mean(ratios):.3f}, "
          f"stdev {statistics.stdev(ratios) if len(ratios) > 1 else 0:.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} rounds "
          f"(off {statistics.mean(off_all):.0f} tok/s, on {statistics.mean(on_all):.0f} tok/s; "
          f"{args.requests} requests x {args.tokens} tokens, logprobs={args.logprobs})")
    print(f"adapter self-time: {c['self_us_per_step']:.1f} us per step over {c['steps']} traced steps; "
          f"step time {c['step_us']:.0f} us; fraction {100 * c['fraction']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
