"""Scenarios run on real SGLang (CPU) for the adapter tests; one engine per process.

Run with the SGLang venv's python (scripts/setup-sglang.sh), the test-only
``sgl_kernel`` stand-in on PYTHONPATH (tests/engines/sgl_kernel_stub),
TOKTRACE_DIR set (so the .pth hook traces it), and an output JSON path; it
writes what SGLang itself returned, for the tests to compare with the trace:

  python sglang_scenarios.py mixed OUT.json [--loop overlap|normal]
  python sglang_scenarios.py interference OUT.json
  python sglang_scenarios.py mixed-chunk OUT.json
  python sglang_scenarios.py retract OUT.json
  python sglang_scenarios.py data-parallel OUT.json
  python sglang_scenarios.py vllm-mixed OUT.json
  python sglang_scenarios.py topk OUT.json

mixed         16 concurrent requests of mixed prompt lengths, several sharing a
              long prefix (radix cache on, as by default), two prompts longer
              than the prefill chunk (chunked prefill), top_logprobs_num=5 (every
              fifth request asks for no logprobs).
              Both scheduler loops: overlap (SGLang's default) and normal.
data-parallel two DP schedulers (dp_size=2) behind one tokenizer manager.
vllm-mixed    the workload of vllm_scenarios.py mixed (fixtures/traces/vllm-mixed),
              for the cross-engine check of the analyzer's output.
interference  chunked prefill off; 4 requests decode, then a prompt of
              thousands of tokens arrives while they run.
mixed-chunk   the same with chunked prefill and --enable-mixed-chunk: the long
              prompt's chunks share batches with the decoders (MIXED mode).
topk          requests asking for no logprobs and for 5, greedy, two prompts
              sent twice; run with TOKTRACE_TOPK_SAMPLE set or not
              (what the clients get must not change).
retract       a KV pool of a few hundred tokens and more decode work than
              fits, so the scheduler retracts (preempts) requests; one more
              request is aborted by its client while queued, and one is
              rejected at admission (a priority while priority scheduling is off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.abspath(os.path.join(HERE, "..", "..", "fixtures", "tiny-llama"))

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

WORDS = ("the little girl saw a red ball in the garden and she ran to get it . "
         "one day tom went to the park with his mother . ").split()


def text(n_words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def engine_kwargs(**over: Any) -> dict:
    """What runs SGLang on this CPU (see fixtures/SGLANG_NOTES.md)."""
    kw: dict[str, Any] = dict(
        model_path=MODEL, device="cpu", attention_backend="torch_native", sampling_backend="pytorch",
        disable_cuda_graph=True, dtype="float32", context_length=4096, mem_fraction_static=0.05,
        random_seed=0, log_level="error", chunked_prefill_size=256,
    )
    kw.update(over)
    return kw


def make_engine(**over: Any):
    import sglang

    t0 = time.monotonic()
    engine = sglang.Engine(**engine_kwargs(**over))
    return engine, time.monotonic() - t0


def dump(rids: list[str], prompts: list[list[int]], outs: list[dict], params: list[dict],
         logprobs: list[bool] | None = None) -> list[dict]:
    reqs = []
    asked = logprobs or [True] * len(rids)
    for rid, prompt, o, sp, lp in zip(rids, prompts, outs, params, asked):
        meta = o["meta_info"]
        reqs.append({
            "rid": rid,
            "logprobs": lp,
            "max_new_tokens": sp.get("max_new_tokens"),
            "temperature": sp.get("temperature", 1.0),
            "meta_id": meta.get("id"),
            "prompt_token_ids": prompt,
            "output_ids": list(o.get("output_ids") or [t[1] for t in meta.get("output_token_logprobs", [])]),
            "finish_reason": meta.get("finish_reason"),
            "prompt_tokens": meta.get("prompt_tokens"),
            "completion_tokens": meta.get("completion_tokens"),
            "cached_tokens": meta.get("cached_tokens"),
            # Per position: (logprob, token id) and the top list [(logprob, token id), …].
            "token_logprobs": [[t[0], t[1]] for t in meta.get("output_token_logprobs") or []],
            "top_logprobs": [[[c[0], c[1]] for c in pos] for pos in meta.get("output_top_logprobs") or []],
        })
    return reqs


def tokenize(prompts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    return [tok(p)["input_ids"] for p in prompts]


def mixed(loop: str) -> dict:
    engine, start_s = make_engine(disable_overlap_schedule=(loop == "normal"))
    try:
        shared = text(70)  # a long common prefix: later requests hit the radix cache
        prompts = []
        for i in range(16):
            if i % 4 == 0:
                p = shared + " " + text(3 + i, offset=i)
            elif i in (5, 11):
                p = text(300 + 20 * i, offset=i)  # longer than chunked_prefill_size: chunked
            else:
                p = text(4 + (i * 7) % 40, offset=i)
            prompts.append(p)
        ids = tokenize(prompts)
        # The first shared-prefix request runs alone first, so the others find
        # its prefix in the radix cache.
        warm = [{"max_new_tokens": 4, "temperature": 0.0}]
        # It also carries a W3C traceparent, as a gateway would send it.
        first = engine.generate(input_ids=[ids[0]], sampling_params=warm,
                                return_logprob=True, top_logprobs_num=5, rid=["warm-0"],
                                external_trace_header={"traceparent": TRACEPARENT})
        rids = [f"mixed-{i}" for i in range(len(ids))]
        params = [{"max_new_tokens": 10 + i % 7, "temperature": 0.8, "sampling_seed": 100 + i}
                  for i in range(len(ids))]
        # A few ask for no logprobs: their rows share steps with rows that do.
        want_lp = [i % 5 != 4 for i in range(len(ids))]
        t0 = time.monotonic()
        outs = engine.generate(input_ids=ids, sampling_params=params, return_logprob=want_lp,
                               top_logprobs_num=[5 if w else 0 for w in want_lp], rid=rids)
        generate_s = time.monotonic() - t0
        reqs = dump(["warm-0"], [ids[0]], first, warm) + dump(rids, ids, outs, params, want_lp)
    finally:
        engine.shutdown()
    return {"requests": reqs, "loop": loop, "start_s": start_s, "generate_s": generate_s}


def interference(mixed_chunk: bool = False) -> dict:
    """Decoders, then a long prompt. Chunked prefill off: one prefill step
    stalls them. ``mixed_chunk``: 128-token chunks, each run in one batch with
    the decoders' rows (SGLang's MIXED mode; it needs requests without logprobs)."""
    import asyncio

    if mixed_chunk:
        engine, start_s = make_engine(chunked_prefill_size=128, enable_mixed_chunk=True,
                                      disable_overlap_schedule=True)
    else:
        engine, start_s = make_engine(chunked_prefill_size=-1, disable_overlap_schedule=True)
    try:
        dec_ids = tokenize([text(8, offset=i) for i in range(4)])
        long_ids = tokenize([text(800 if mixed_chunk else 2600)])[0]
        dec_params = [{"max_new_tokens": 120, "temperature": 0.0, "ignore_eos": True}] * 4
        long_params = [{"max_new_tokens": 4, "temperature": 0.0}]
        decoding = asyncio.Event()

        async def one(rid: str, ids: list[int], params: dict, watch: bool) -> dict:
            last: dict = {}
            chunks = 0
            async for chunk in await engine.async_generate(input_ids=ids, sampling_params=params, rid=rid,
                                                           stream=True):
                last, chunks = chunk, chunks + 1
                if watch and chunks == 10:
                    decoding.set()  # the decoders are well into decoding: now the long prompt
            return last

        async def long_prompt() -> dict:
            await decoding.wait()
            return await one("long-prompt", long_ids, long_params[0], False)

        async def run() -> list:
            return await asyncio.gather(*(one(f"decode-{i}", dec_ids[i], dec_params[i], i == 0)
                                          for i in range(4)), long_prompt())

        outs = engine.loop.run_until_complete(run())
        rids = [f"decode-{i}" for i in range(4)] + ["long-prompt"]
        reqs = dump(rids, dec_ids + [long_ids], outs, dec_params + long_params)
    finally:
        engine.shutdown()
    return {"requests": reqs, "start_s": start_s}


def retract() -> dict:
    # A pool of a few hundred tokens for 12 requests that each grow to ~120.
    # schedule_conservativeness near 0: SGLang admits requests as if they will
    # need almost no room to decode, then has to retract some when the pool fills.
    # A request that names a priority while priority scheduling is off is
    # rejected at admission (abort_on_priority_when_disabled).
    engine, start_s = make_engine(max_total_tokens=512, disable_radix_cache=True, chunked_prefill_size=128,
                                  max_prefill_tokens=128, disable_overlap_schedule=True,
                                  schedule_conservativeness=0.01, abort_on_priority_when_disabled=True)
    try:
        prompts = [text(20 + i, offset=i) for i in range(12)]
        ids = tokenize(prompts)
        rids = [f"retract-{i}" for i in range(12)]
        # min_new_tokens, not ignore_eos: SGLang reserves the whole max_new_tokens
        # of an ignore_eos request at admission, so it would never need to retract.
        params = [{"max_new_tokens": 100, "min_new_tokens": 100, "temperature": 0.8, "sampling_seed": 7 + i}
                  for i in range(12)]
        extra = tokenize([text(30, offset=5)])[0]
        aborted: dict = {}
        rejected: dict = {}

        async def reject() -> None:
            try:
                rejected["out"] = await engine.async_generate(
                    input_ids=extra, sampling_params={"max_new_tokens": 8}, rid="rejected-0", priority=1)
            except Exception as exc:  # noqa: BLE001 - how SGLang reports it is not the point
                rejected["error"] = repr(exc)

        async def run() -> list:
            import asyncio

            main = asyncio.ensure_future(engine.async_generate(
                input_ids=ids, sampling_params=params, return_logprob=True, top_logprobs_num=2, rid=rids))
            # One more request that the client gives up on while it waits in
            # the queue (the pool is full): SGLang aborts it.
            late = asyncio.ensure_future(engine.async_generate(
                input_ids=extra, sampling_params={"max_new_tokens": 100}, rid="aborted-0"))
            while "aborted-0" not in engine.tokenizer_manager.rid_to_state:
                await asyncio.sleep(0.01)
            engine.tokenizer_manager.abort_request(rid="aborted-0")
            try:
                aborted["out"] = await late
            except Exception as exc:  # noqa: BLE001 - how SGLang reports it is not the point
                aborted["error"] = repr(exc)
            await reject()
            return await main

        outs = engine.loop.run_until_complete(run())
        reqs = dump(rids, ids, outs, params)
    finally:
        engine.shutdown()

    def gone(rid: str, got: dict) -> dict:
        out = got.get("out") or {}
        return {"rid": rid, "prompt_tokens": len(extra),
                "finish_reason": (out.get("meta_info") or {}).get("finish_reason"),
                "output_ids": list(out.get("output_ids") or []), "error": got.get("error")}

    return {"requests": reqs, "start_s": start_s,
            "aborted": gone("aborted-0", aborted), "rejected": gone("rejected-0", rejected)}


def data_parallel() -> dict:
    """Two data-parallel schedulers (``dp_size=2``) behind one tokenizer manager."""
    # On a CPU with one NUMA node SGLang 0.5.19 on wants each rank's cores
    # named; 0.5.13-0.5.18 fail with them named and bind by themselves.
    from importlib.metadata import version

    if tuple(int(x) for x in version("sglang").split(".")[:3]) >= (0, 5, 19):
        os.environ.setdefault("SGLANG_CPU_OMP_THREADS_BIND", "0|1")
    engine, start_s = make_engine(dp_size=2, max_total_tokens=8192)
    try:
        ids = tokenize([text(5 + 3 * i, offset=i) for i in range(10)])
        rids = [f"dp-{i}" for i in range(10)]
        params = [{"max_new_tokens": 6 + i % 4, "temperature": 0.8, "sampling_seed": 30 + i} for i in range(10)]
        outs = engine.generate(input_ids=ids, sampling_params=params, return_logprob=True, top_logprobs_num=3,
                               rid=rids)
        reqs = dump(rids, ids, outs, params)
    finally:
        engine.shutdown()
    return {"requests": reqs, "start_s": start_s}


def vllm_mixed() -> dict:
    """The workload of vllm_scenarios.mixed (fixtures/traces/vllm-mixed), on SGLang.

    Same prompts, lengths, top-5 and sampling settings; vLLM's ``n=2`` request
    becomes two requests (``5`` and ``5-b``), as SGLang's ``rid`` names one
    completion each. The analyzer's output is then checked the same way on
    both engines' traces.
    """
    from vllm_scenarios import text as vllm_text

    engine, start_s = make_engine()
    try:
        shared = vllm_text(60)
        prompts, params, rids = [], [], []
        for i in range(18):
            p = shared + " " + vllm_text(3 + i, offset=i) if i % 3 == 0 else vllm_text(4 + (i * 7) % 40, offset=i)
            for copy in ((0, 1) if i == 5 else (0,)):
                prompts.append(p)
                rids.append(str(i) if copy == 0 else f"{i}-b")
                params.append({"max_new_tokens": 12 + i % 5, "temperature": 0.8, "sampling_seed": 100 + i + 1000 * copy})
        ids = tokenize(prompts)
        outs = engine.generate(input_ids=ids, sampling_params=params, return_logprob=True, top_logprobs_num=5,
                               rid=rids)
        reqs = dump(rids, ids, outs, params)
    finally:
        engine.shutdown()
    return {"requests": reqs, "start_s": start_s}


def topk() -> dict:
    engine, _ = make_engine()
    try:
        prompts = [text(6 + 3 * (i % 6), offset=i % 6) for i in range(12)]
        ids = tokenize(prompts)
        # No client asks for fewer than 5 here: the trace keeps one K per
        # SGLang step (the smallest asked in it), which would cut the
        # sampled requests' candidates to that.
        asked = [(None, None, 5, 5)[i % 4] for i in range(12)]
        rids = [f"topk-{i}" for i in range(12)]
        params = [{"max_new_tokens": 12, "temperature": 0.0} for _ in range(12)]
        outs = engine.generate(input_ids=ids, sampling_params=params, return_logprob=[a is not None for a in asked],
                               top_logprobs_num=[a or 0 for a in asked], rid=rids)
        reqs = dump(rids, ids, outs, params, [a is not None for a in asked])
        for r, a, o in zip(reqs, asked, outs):
            r["asked"] = a
            r["meta_logprob_keys"] = sorted(k for k in o["meta_info"] if "logprob" in k)
            r["text"] = o.get("text")
    finally:
        engine.shutdown()
    return {"requests": reqs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["mixed", "interference", "mixed-chunk", "retract", "data-parallel",
                                           "vllm-mixed", "topk"])
    ap.add_argument("out")
    ap.add_argument("--loop", choices=["overlap", "normal"], default="overlap",
                    help="which scheduler event loop runs (mixed only)")
    args = ap.parse_args()
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The tiny model declares 512 positions; the interference prompt is longer
    # (RoPE computes any position; the text is nonsense, the timing is real).
    os.environ.setdefault("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "1")
    if args.scenario == "mixed":
        result = mixed(args.loop)
    else:
        result = {"interference": interference, "mixed-chunk": lambda: interference(mixed_chunk=True),
                  "retract": retract, "data-parallel": data_parallel, "vllm-mixed": vllm_mixed,
                  "topk": topk}[args.scenario]()
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
