"""Shape tests of the TensorRT-LLM adapter — NOT a run of TensorRT-LLM.

TensorRT-LLM cannot run on this project's machines (it needs an NVIDIA GPU,
and its wheels live on pypi.nvidia.com, which is not reachable). These tests
drive the adapter (``engine-adapters/adapters/tensorrt_llm``) through
``PyExecutor``'s documented call sequence and data shapes, reproduced by the
stand-in package in ``tests/python/support/trtllm_shapes`` (test scaffolding;
its docstrings name the source revisions it mirrors: the 2026 layout and the
2025 layout). Each test runs a workload in a fresh interpreter with
``TLLM_TOKTRACE_DIR`` set — the spelling TensorRT-LLM forwards to its MPI
workers — so activation goes through ``toktrace.pth`` as in a worker, then
reads the trace back with the Rust reader (``toktrace dump`` and the CLI's
JSON) and compares it with the stand-in engine's own account of what it did
(every launch's rows, every token it added and the launch that computed it,
every finish).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import SUPPORT, cli_json, clean_env, dump, process_dirs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trace_tokens import requests_of, tokens_by_request  # noqa: E402

SHAPES = SUPPORT / "trtllm_shapes"
DRIVE = SHAPES / "drive.py"

# The stand-in sampler's FinishReason names -> the words the probe records.
REASONS = {"END_ID": "stop", "STOP_WORDS": "stop", "LENGTH": "length", "CANCELLED": "abort", "error": "error"}


# ----- running a workload -----


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    engine: dict
    trace_dir: Path

    @property
    def outputs(self) -> str:
        """The engine's outputs per client (tokens, finish reasons) as the driver prints them."""
        return self.proc.stdout

    def trace(self) -> "Trace":
        return Trace(self.trace_dir)


def run(tmp_path: Path, spec: dict, *, layout: str = "2026", version: str | None = None, traced: bool = True,
        name: str = "run", **env: str) -> Run:
    spec_file = tmp_path / f"{name}-spec.json"
    out_file = tmp_path / f"{name}-engine.json"
    trace_dir = tmp_path / f"{name}-trace"
    spec_file.write_text(json.dumps(spec))
    extra = dict(env, FAKE_TLLM_LAYOUT=layout)
    if version is not None:
        extra["FAKE_TLLM_VERSION"] = version
    if traced:
        extra["TLLM_TOKTRACE_DIR"] = str(trace_dir)
    environ = clean_env(**extra)
    environ["PYTHONPATH"] = str(SHAPES)
    proc = subprocess.run([sys.executable, str(DRIVE), str(spec_file), str(out_file)], env=environ,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Run(proc, json.loads(out_file.read_text()), trace_dir)


def traced(tmp_path: Path, spec: dict, **kwargs: Any) -> tuple[dict, "Trace"]:
    r = run(tmp_path, spec, **kwargs)
    assert "toktrace:" not in r.proc.stderr, r.proc.stderr
    return r.engine, r.trace()


class Trace:
    """The trace read back through the Rust reader, joined per request id."""

    def __init__(self, path: Path) -> None:
        [self.pdir] = process_dirs(path)
        recs = [r["record"] for r in dump(self.pdir)]
        self.info = next(r["Process"] for r in recs if "Process" in r)
        self.ids, self.arrivals, self.finishes = requests_of(recs)
        self.steps = [r["Step"] for r in recs if "Step" in r]
        self.tokens = tokens_by_request(self.steps, self.ids)

    def rows(self, n: int) -> list[list]:
        """Step n's batch as [request id, prefill, decode, cached]."""
        return [[self.ids[b["req"]], b["prefill_tokens"], b["decode_tokens"], b["cached_tokens"]]
                for b in self.steps[n]["batch"]]

    def names(self, keys: list[int]) -> list[str]:
        return [self.ids[k] for k in keys]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-5)  # the probe stores logprobs as f32


# ----- what the engine did, and what the trace must therefore hold -----


def engine_tokens(engine: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for t in engine["tokens"]:
        out[str(t["rid"])].append(t)
    return out


def expected_steps(engine: dict) -> list[tuple[dict, list[list]]]:
    """The launches the trace must hold, each with the rows it must keep.

    The overlap loop launches step N+1 before step N's tokens are added, so a
    request that finished with step N's token still rides along in step N+1,
    whose output for it is discarded: that row belongs to no trace step, and
    a launch left without rows is no trace step either.
    """
    last_launch = {}
    for t in engine["tokens"]:
        last_launch[t["rid"]] = t["launch"]
    finished = {int(rid) for rid, why in engine["finishes"].items() if why in ("END_ID", "LENGTH")}
    out = []
    for launch in engine["launches"]:
        rows = [row for row in launch["rows"]
                if not (row[0] in finished and launch["launch"] > last_launch.get(row[0], -1))]
        if rows:
            out.append((launch, [[str(r[0]), r[1], r[2], r[3]] for r in rows]))
    return out


def check_tokens(engine: dict, trace: Trace) -> int:
    """Every token the engine added is in the trace: id, index, logprob, rank,
    top-K (ids and logprobs, best first); none more."""
    want = engine_tokens(engine)
    assert set(trace.tokens) == set(want), (sorted(trace.tokens), sorted(want))
    checked = 0
    for rid, toks in want.items():
        got = trace.tokens[rid]
        assert [t["index"] for t in got] == [t["index"] for t in toks] == list(range(len(toks))), rid
        assert [t["token_id"] for t in got] == [t["token"] for t in toks], rid
        for g, w in zip(got, toks):
            if w["logprob"] is None:
                assert "logprob" not in g, (rid, w["index"])
                continue
            assert "logprob" in g and close(g["logprob"], w["logprob"]), (rid, w["index"], g, w)
            if w["rank"] is None:
                assert not g["rank"], (rid, w["index"], g["rank"])  # not given: null, never guessed
            else:
                assert g["rank"] == w["rank"], (rid, w["index"], g["rank"], w["rank"])
            assert [t for t, _ in g["top"]] == [c[0] for c in w["top"]], (rid, w["index"])
            assert all(close(a, c[1]) for (_, a), c in zip(g["top"], w["top"])), (rid, w["index"])
            checked += 1
    return checked


def check_steps(engine: dict, trace: Trace) -> list[tuple[dict, list[list]]]:
    """One trace step per launch that produced something, in launch order, each
    with the launch's rows, queue lengths and KV usage; its start no later than
    the launch, its end no earlier than the last of its tokens was added and no
    later than the engine handed them to the clients; and each token in the
    step of the launch that computed it."""
    expected = expected_steps(engine)
    assert len(trace.steps) == len(expected), ([len(s["batch"]) for s in trace.steps], [e[1] for e in expected])
    added: dict[int, int] = {}
    for t in engine["tokens"]:
        added[t["launch"]] = max(added.get(t["launch"], 0), t["t_ns"])
    step_of_launch = {launch["launch"]: n for n, (launch, _) in enumerate(expected)}
    for n, (launch, rows) in enumerate(expected):
        step = trace.steps[n]
        assert trace.rows(n) == rows, (n, trace.rows(n), rows)
        assert step["waiting"] == launch["waiting"] and step["running"] == launch["running"], n
        assert close(step["kv_usage"], launch["kv"]), (n, step["kv_usage"], launch["kv"])
        assert step["start_ns"] <= launch["t_ns"], n
        if launch["launch"] in added:
            assert step["end_ns"] >= added[launch["launch"]], n
            delivered = min(t for t in engine["delivered_ns"] if t >= added[launch["launch"]])
            assert step["end_ns"] <= delivered, (n, step["end_ns"] - delivered)
    for rid, toks in engine_tokens(engine).items():
        for got, want in zip(trace.tokens[rid], toks):
            assert got["step_no"] == step_of_launch[want["launch"]], (rid, want["index"])
    return expected


def spec_of(*requests: dict, **options: Any) -> dict:
    return dict(requests=list(requests), **options)


# ----- the call sequence: steps, chunks, pairing -----


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_context_only_first_step(tmp_path: Path, layout: str):
    engine, trace = traced(tmp_path, spec_of(dict(client=1, prompt=12, max_tokens=4, logprobs=2)), layout=layout)
    [rid] = engine["clients"]["1"]
    check_steps(engine, trace)
    check_tokens(engine, trace)
    # The first step is the whole prompt and nothing else; its only token is the first one.
    assert trace.rows(0) == [[str(rid), 12, 0, 0]]
    assert [t["index"] for t in trace.tokens[str(rid)] if t["step_no"] == 0] == [0]
    assert all(row[1] == 0 and row[2] == 1 for n in range(1, len(trace.steps)) for row in trace.rows(n))


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_mixed_context_and_generation_step(tmp_path: Path, layout: str):
    spec = spec_of(dict(client=1, prompt=10, max_tokens=6, logprobs=2),
                   dict(client=2, prompt=14, max_tokens=3, logprobs=2, arrive_iter=2))
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    check_tokens(engine, trace)
    a, b = str(engine["clients"]["1"][0]), str(engine["clients"]["2"][0])
    mixed = [n for n in range(len(trace.steps))
             if {r[0] for r in trace.rows(n) if r[1] > 0} == {b} and {r[0] for r in trace.rows(n) if r[2] > 0} == {a}]
    assert mixed, [trace.rows(n) for n in range(len(trace.steps))]


@pytest.mark.parametrize("layout,overlap", [("2026", False), ("2026", True), ("2025", False), ("2025", True)])
def test_shape_chunked_context_counts_each_chunk(tmp_path: Path, layout: str, overlap: bool):
    chunk, prompt, cached_prefix = 16, 40, 0
    spec = spec_of(dict(client=1, prompt=prompt, max_tokens=3, logprobs=1),
                   dict(client=2, prompt=prompt, max_tokens=3, cached_prefix=8),
                   chunk_size=chunk, max_num_tokens=64, overlap=overlap)
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    check_tokens(engine, trace)
    for client, reused in (("1", cached_prefix), ("2", 8)):
        rid = str(engine["clients"][client][0])
        steps = [n for n in range(len(trace.steps)) if any(r[0] == rid and r[1] for r in trace.rows(n))]
        chunks = [r[1] for n in steps for r in trace.rows(n) if r[0] == rid]
        cached = [r[3] for n in steps for r in trace.rows(n) if r[0] == rid]
        # Each chunk is counted in its own step; cache hits only on the first.
        rest = prompt - reused
        assert chunks == [min(chunk, rest - i) for i in range(0, rest, chunk)], (client, chunks)
        assert cached == [reused] + [0] * (len(chunks) - 1), (client, cached)
        assert sum(chunks) + sum(cached) == prompt == trace.arrivals[rid]["prompt_tokens"]
        # No token before the last chunk; the first token in the last chunk's step.
        first = next(t for t in trace.tokens[rid] if t["index"] == 0)
        assert first["step_no"] == steps[-1], (client, first["step_no"], steps)


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_overlap_pairs_step_n_with_its_own_tokens(tmp_path: Path, layout: str):
    spec = spec_of(*(dict(client=c, prompt=6 + 3 * c, max_tokens=4 + c, logprobs=3, stop_at=5 if c == 2 else None,
                          arrive_iter=c // 2) for c in range(1, 5)), overlap=True)
    engine, trace = traced(tmp_path, spec, layout=layout)
    expected = check_steps(engine, trace)
    check_tokens(engine, trace)
    # Step N+1 was launched before step N's tokens were known: their spans overlap.
    overlapped = [n for n in range(len(trace.steps) - 1)
                  if trace.steps[n + 1]["start_ns"] < trace.steps[n]["end_ns"]]
    assert len(overlapped) >= len(trace.steps) // 2, overlapped
    # A request that finished rode along in the next launch: that row is not in the trace.
    assert sum(len(l["rows"]) for l in engine["launches"]) > sum(len(rows) for _, rows in expected)


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_non_overlap_steps_follow_each_other(tmp_path: Path, layout: str):
    spec = spec_of(*(dict(client=c, prompt=5 + c, max_tokens=3 + c, logprobs=2) for c in range(1, 4)))
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    check_tokens(engine, trace)
    for n in range(len(trace.steps) - 1):
        assert trace.steps[n]["start_ns"] <= trace.steps[n]["end_ns"] <= trace.steps[n + 1]["start_ns"]


@pytest.mark.parametrize("layout,overlap", [("2026", False), ("2026", True), ("2025", False)])
def test_shape_paused_request_is_reported_and_prefilled_again(tmp_path: Path, layout: str, overlap: bool):
    pause_at = 3
    spec = spec_of(dict(client=1, prompt=12, max_tokens=7, logprobs=2),
                   dict(client=2, prompt=9, max_tokens=7, logprobs=2),
                   pause={str(pause_at): [1]}, overlap=overlap)
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    check_tokens(engine, trace)
    rid = str(engine["clients"]["1"][0])
    # Reported with the first step launched after the pause, exactly once.
    paused = [n for n, s in enumerate(trace.steps) if s["preempted"]]
    [launch] = [l for l in engine["launches"] if l["paused"]]
    assert len(paused) == 1 and trace.names(trace.steps[paused[0]]["preempted"]) == [rid]
    assert trace.steps[paused[0]]["start_ns"] <= launch["t_ns"]
    # Prefilled again from the start: the prompt plus what it had generated.
    before = [t for t in trace.tokens[rid] if t["step_no"] < paused[0]]
    again = [r for n in range(paused[0], len(trace.steps)) for r in trace.rows(n) if r[0] == rid and r[1]]
    assert sum(r[1] for r in again) == 12 + len(before) and all(r[3] == 0 for r in again)
    assert [t["index"] for t in trace.tokens[rid]] == list(range(7))


# ----- tokens and logprobs -----


@pytest.mark.parametrize("layout,overlap", [("2026", False), ("2026", True), ("2025", False), ("2025", True)])
def test_shape_logprob_dicts_sampled_token_and_top_k(tmp_path: Path, layout: str, overlap: bool):
    k = 3
    spec = spec_of(dict(client=1, prompt=8, max_tokens=9, logprobs=k),
                   dict(client=2, prompt=11, max_tokens=9, logprobs=k, streaming=True),
                   dict(client=3, prompt=7, max_tokens=9, logprobs=k, arrive_iter=1), overlap=overlap)
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    assert check_tokens(engine, trace) == sum(len(v) for v in engine_tokens(engine).values())
    ranks = [t["rank"] for t in engine["tokens"]]
    # The workload has sampled tokens at rank 1, inside the top-K below rank 1,
    # and outside the top-K (its rank is the engine's, beyond K).
    assert 1 in ranks and any(1 < r <= k for r in ranks) and any(r > k for r in ranks), ranks
    outside = [t for toks in trace.tokens.values() for t in toks if t["rank"] > k]
    assert outside and all(len(t["top"]) == k and t["token_id"] not in [i for i, _ in t["top"]] for t in outside)
    assert all(s["tokens"]["runs"] and all(r["top_k"] == k for r in s["tokens"]["runs"]) for s in trace.steps)


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_logprobs_sampled_only_simple_format_and_none(tmp_path: Path, layout: str):
    spec = spec_of(dict(client=1, prompt=8, max_tokens=5, logprobs=0),
                   dict(client=2, prompt=8, max_tokens=5, logprobs=0, simple=True),
                   dict(client=3, prompt=8, max_tokens=5))
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    check_tokens(engine, trace)
    dict_rid, simple_rid, none_rid = (str(engine["clients"][c][0]) for c in ("1", "2", "3"))
    assert all("logprob" in t and t["rank"] >= 1 and t["top"] == [] for t in trace.tokens[dict_rid])
    assert all("logprob" in t and not t["rank"] and t["top"] == [] for t in trace.tokens[simple_rid])  # rank: null
    assert not any("logprob" in t for t in trace.tokens[none_rid])
    assert trace.arrivals[none_rid]["params"]["logprobs"] is None
    assert trace.arrivals[dict_rid]["params"]["logprobs"] == 0


# ----- lifecycle -----


def test_shape_n_sequences_arrive_together_and_finish_separately(tmp_path: Path):
    spec = spec_of(dict(client=7, prompt=10, max_tokens=6, n=2, logprobs=1, temperature=0.8, top_p=0.9, top_k=40,
                        seed=11),
                   dict(client=8, prompt=6, max_tokens=9, stop_at=3, arrive_iter=1), overlap=True)
    engine, trace = traced(tmp_path, spec, layout="2026")
    check_steps(engine, trace)
    check_tokens(engine, trace)
    parent, child = (str(r) for r in engine["clients"]["7"])
    # Two requests, arriving with the parent's enqueue, under the client's id.
    assert trace.arrivals[parent]["arrival_ns"] == trace.arrivals[child]["arrival_ns"]
    assert trace.arrivals[parent]["arrival_ns"] <= engine["enqueued_ns"][parent]
    assert trace.arrivals[parent]["external_id"] == trace.arrivals[child]["external_id"] == "7"
    params = trace.arrivals[child]["params"]
    assert (params["temperature"], params["top_k"], params["max_tokens"], params["logprobs"], params["seed"]) == \
        (pytest.approx(0.8), 40, 6, 1, 11)
    assert params["top_p"] == pytest.approx(0.9)
    for rid in (parent, child, str(engine["clients"]["8"][0])):
        fin = trace.finishes[rid]
        assert fin["output_tokens"] == len(engine_tokens(engine)[rid]), rid
    # The analyzer reads them as any engine's requests.
    rows = {r["internal_id"]: r for r in cli_json("requests", str(trace.pdir))}
    for rid, why in engine["finishes"].items():
        assert rows[rid]["finish_reason"] == REASONS[why], (rid, rows[rid]["finish_reason"], why)
        assert rows[rid]["output_tokens"] == len(engine_tokens(engine)[rid])
        assert rows[rid]["prompt_tokens"] == trace.arrivals[rid]["prompt_tokens"]
    assert {REASONS[w] for w in engine["finishes"].values()} == {"length", "stop"}


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_cancelled_request_finishes_as_abort(tmp_path: Path, layout: str):
    spec = spec_of(dict(client=1, prompt=8, max_tokens=12, logprobs=1),
                   dict(client=2, prompt=8, max_tokens=4, logprobs=1), cancel={"4": [1]})
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_tokens(engine, trace)
    rid = str(engine["clients"]["1"][0])
    assert engine["finishes"][rid] == "CANCELLED"
    fin = trace.finishes[rid]
    assert fin["reason"] == "Abort", fin
    assert fin["output_tokens"] == len(engine_tokens(engine)[rid]) < 12
    # Its last tokens are recorded before its finish, and nothing after.
    last_step = max(t["step_no"] for t in trace.tokens[rid])
    assert all(r[0] != rid for n in range(last_step + 1, len(trace.steps)) for r in trace.rows(n))


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_engine_error_finishes_requests_as_error(tmp_path: Path, layout: str):
    spec = spec_of(dict(client=1, prompt=8, max_tokens=8), dict(client=2, prompt=8, max_tokens=8),
                   dict(client=3, prompt=8, max_tokens=3, arrive_iter=6), fail_iters=[3])
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_tokens(engine, trace)
    for client, why in (("1", "Error"), ("2", "Error"), ("3", "Length")):
        rid = str(engine["clients"][client][0])
        assert trace.finishes[rid]["reason"] == why, (client, trace.finishes[rid])
        assert trace.finishes[rid]["output_tokens"] == len(engine_tokens(engine).get(rid, []))


def test_shape_process_info_and_arrivals(tmp_path: Path):
    spec = spec_of(dict(client=3, prompt=9, max_tokens=2, temperature=0.5, top_k=5, seed=3, logprobs=2),
                   dict(client=4, prompt=13, max_tokens=2, arrive_iter=3), warmup=2)
    engine, trace = traced(tmp_path, spec)
    info = trace.info
    assert (info["engine"], info["engine_version"], info["role"], info["rank"]) == \
        ("tensorrt_llm", "1.3.0rc20", "executor", 0)
    assert info["model_name"] == "fake/tiny-trtllm"
    assert info["special_tokens"]["bos"] == 1 and info["special_tokens"]["eos"] == [2]
    assert dict(info["extra"])["overlap_scheduler"] == "False"
    # Only the workload arrived: the warm-up executor's dummy requests are not traced.
    assert sorted(trace.arrivals) == sorted(str(r) for rids in engine["clients"].values() for r in rids)
    for client, rids in engine["clients"].items():
        rid = str(rids[0])
        a = trace.arrivals[rid]
        assert a["external_id"] == client
        assert a["prompt_tokens"] == next(r["prompt"] for r in spec["requests"] if str(r["client"]) == client)
        # Arrival is when the executor accepted the request, before it was ever scheduled.
        assert a["arrival_ns"] <= engine["enqueued_ns"][rid]
        first = min(t["step_no"] for t in trace.tokens[rid])
        assert a["arrival_ns"] < trace.steps[first]["start_ns"]


def test_shape_layouts_trace_alike(tmp_path: Path):
    spec = spec_of(dict(client=1, prompt=20, max_tokens=4, logprobs=2),
                   dict(client=2, prompt=7, max_tokens=6, logprobs=2, arrive_iter=1), chunk_size=8)
    traces = [traced(tmp_path, spec, layout=layout, name=layout)[1] for layout in ("2025", "2026")]
    a, b = traces
    assert [a.rows(n) for n in range(len(a.steps))] == [b.rows(n) for n in range(len(b.steps))]
    assert {rid: [(t["token_id"], t["rank"], t["top"]) for t in toks] for rid, toks in a.tokens.items()} == \
        {rid: [(t["token_id"], t["rank"], t["top"]) for t in toks] for rid, toks in b.tokens.items()}


# ----- ranks, versions, surprises -----


def test_shape_only_rank_0_writes(tmp_path: Path):
    spec = spec_of(dict(client=1, prompt=8, max_tokens=3), tp_size=2)
    baseline = run(tmp_path, spec, traced=False, name="baseline")
    other = run(tmp_path, dict(spec, rank=1), name="rank1")
    assert other.proc.stderr == "" and other.outputs == baseline.outputs
    assert not other.trace_dir.exists() or process_dirs(other.trace_dir) == []
    owner = run(tmp_path, dict(spec, rank=0), name="rank0")
    assert owner.outputs == baseline.outputs
    assert owner.trace().info["rank"] == 0


def test_shape_unknown_version_warns_once_and_leaves_the_engine_alone(tmp_path: Path):
    spec = spec_of(dict(client=1, prompt=8, max_tokens=4, logprobs=2), dict(client=2, prompt=5, max_tokens=3))
    baseline = run(tmp_path, spec, version="0.19.0", traced=False, name="baseline")
    r = run(tmp_path, spec, version="0.19.0", name="unknown")
    assert r.outputs == baseline.outputs
    lines = r.proc.stderr.splitlines()
    assert len(lines) == 1, r.proc.stderr
    assert "tensorrt_llm 0.19.0" in lines[0] and "untraced" in lines[0]
    assert not r.trace_dir.exists() or process_dirs(r.trace_dir) == []


def test_shape_unknown_layout_warns_once_and_leaves_the_engine_alone(tmp_path: Path):
    spec = spec_of(dict(client=1, prompt=8, max_tokens=4), dict(client=2, prompt=5, max_tokens=3))
    baseline = run(tmp_path, spec, traced=False, name="baseline", FAKE_TLLM_RENAME_CANCEL="1")
    r = run(tmp_path, spec, name="renamed", FAKE_TLLM_RENAME_CANCEL="1")
    assert r.outputs == baseline.outputs
    lines = r.proc.stderr.splitlines()
    assert len(lines) == 1, r.proc.stderr
    assert "_handle_canceled_requests" in lines[0] and "untraced" in lines[0]
    assert not r.trace_dir.exists() or process_dirs(r.trace_dir) == []


def test_shape_versions_the_adapter_accepts():
    from toktrace.adapters.tensorrt_llm import layout_for, parse_version

    assert parse_version("1.3.0rc20") == (1, 3, 0) and parse_version("1.2.0.post1") == (1, 2, 0)
    assert layout_for("1.1.0rc6") == layout_for("1.3.0rc20") == "toktrace.adapters.tensorrt_llm.v1_x"
    assert layout_for("0.20.0") is None and layout_for("1.4.0") is None and layout_for("dev") is None


# ----- drift re-checked against the 2026 source (0004396, 2026-12-07) -----


def check_adapter_state_bounded(engine: dict, overlap: bool = False) -> None:
    """What the adapter still holds once the workload is over: no enqueue
    time, no traced request, no deferred finish. A launched batch left
    unpaired is allowed with the overlap loop only: at shutdown it exits
    without updating the batch it launched last, as the source does."""
    state = engine["adapter"]
    assert (state["enqueued"], state["reqs"], state["deferred"]) == ([], [], []), state
    assert state["pending"] <= int(overlap), state


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_enqueue_requests_batch_arrives_at_the_call(tmp_path: Path, layout: str):
    # Both revisions queue a batch inside enqueue_requests itself (not through
    # enqueue_request), so the arrival time can only come from that hook.
    spec = spec_of(dict(client=1, prompt=9, max_tokens=3, logprobs=1), dict(client=2, prompt=6, max_tokens=4),
                   dict(client=3, prompt=7, max_tokens=2, arrive_iter=2), batch_enqueue=True)
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    check_tokens(engine, trace)
    rids = [str(engine["clients"][c][0]) for c in ("1", "2", "3")]
    [at] = {trace.arrivals[rid]["arrival_ns"] for rid in rids}  # one call, one acceptance time
    assert at <= min(engine["enqueued_ns"][rid] for rid in rids)
    assert at < trace.steps[0]["start_ns"]
    check_adapter_state_bounded(engine)


@pytest.mark.parametrize("overlap", [False, True])
def test_shape_request_cancelled_while_waiting_leaves_no_state(tmp_path: Path, overlap: bool):
    # 2026: a cancelled request still in the waiting queue is removed there and
    # never activated. It never had an arrival record (those are written at
    # activation), so the trace holds nothing for it, and the adapter must not
    # keep its enqueue time.
    spec = spec_of(dict(client=1, prompt=8, max_tokens=10, logprobs=1), dict(client=2, prompt=8, max_tokens=4),
                   dict(client=3, prompt=6, max_tokens=3), max_active=1, cancel={"2": [2]}, overlap=overlap)
    engine, trace = traced(tmp_path, spec, layout="2026")
    check_steps(engine, trace)
    check_tokens(engine, trace)
    a, b, c = (str(engine["clients"][k][0]) for k in ("1", "2", "3"))
    assert engine["dropped"] == {b: "cancelled while waiting"}
    assert b not in trace.arrivals and b not in trace.finishes
    # The requests that waited longer and ran keep their enqueue time.
    assert trace.arrivals[c]["arrival_ns"] <= engine["enqueued_ns"][c]
    assert trace.finishes[a]["reason"] == trace.finishes[c]["reason"] == "Length"
    check_adapter_state_bounded(engine, overlap)


def test_shape_2025_cancel_of_a_waiting_request_is_lost_and_it_runs(tmp_path: Path):
    # 2025: cancellation only reaches active requests and the id is then
    # dropped, so the waiting request runs later: its enqueue time must survive
    # the cancellation handler.
    spec = spec_of(dict(client=1, prompt=8, max_tokens=10, logprobs=1), dict(client=2, prompt=8, max_tokens=4),
                   max_active=1, cancel={"2": [2]})
    engine, trace = traced(tmp_path, spec, layout="2025")
    check_steps(engine, trace)
    check_tokens(engine, trace)
    b = str(engine["clients"]["2"][0])
    assert engine["finishes"][b] == "LENGTH" and trace.finishes[b]["reason"] == "Length"
    assert trace.arrivals[b]["arrival_ns"] <= engine["enqueued_ns"][b]
    check_adapter_state_bounded(engine)


@pytest.mark.parametrize("overlap", [False, True])
def test_shape_request_failed_before_activation_leaves_no_state(tmp_path: Path, overlap: bool):
    # 2026: a request failing validation at activation goes through
    # _handle_errors(requests=[request]) without ever being active: no arrival
    # was recorded, so no finish is either, and its enqueue time is dropped.
    spec = spec_of(dict(client=1, prompt=8, max_tokens=6, logprobs=1),
                   dict(client=2, prompt=8, max_tokens=4, invalid=True, arrive_iter=2),
                   dict(client=3, prompt=5, max_tokens=3, arrive_iter=3), overlap=overlap)
    engine, trace = traced(tmp_path, spec, layout="2026")
    check_steps(engine, trace)
    check_tokens(engine, trace)
    a, b, c = (str(engine["clients"][k][0]) for k in ("1", "2", "3"))
    assert engine["finishes"][b] == "error"
    assert b not in trace.arrivals and b not in trace.finishes
    assert trace.finishes[a]["reason"] == trace.finishes[c]["reason"] == "Length"
    check_adapter_state_bounded(engine, overlap)


def test_shape_draft_padding_is_not_decode_work(tmp_path: Path):
    # 2026: drafter tokens are padded with zeros to the static maximum for CUDA
    # graphs after py_draft_tokens_effective_len recorded the real count; a
    # generation row's decode work is 1 + that count.
    spec = spec_of(dict(client=1, prompt=8, max_tokens=9, logprobs=1), dict(client=2, prompt=6, max_tokens=7),
                   draft_k=3)
    engine, trace = traced(tmp_path, spec, layout="2026")
    check_steps(engine, trace)  # rows as launched, decode = the real work
    check_tokens(engine, trace)
    gen = [(row[2], computed) for launch in engine["launches"]
           for row, computed in zip(launch["rows"], launch["computed"]) if row[1] == 0]
    assert {real for real, _ in gen} == {1, 2, 3, 4}  # 0..3 real draft tokens
    assert all(computed == 4 for _, computed in gen) and any(real < 4 for real, _ in gen)  # padding ran


def test_shape_2025_draft_padding_counts_as_computed(tmp_path: Path):
    # 2025 pads in _pad_to_max_draft_tokens and keeps no real count: the trace
    # holds the positions the forward computed, padding included.
    spec = spec_of(dict(client=1, prompt=8, max_tokens=9, logprobs=1), dict(client=2, prompt=6, max_tokens=7),
                   draft_k=3)
    engine, trace = traced(tmp_path, spec, layout="2025")
    check_tokens(engine, trace)
    assert len(trace.steps) == len(engine["launches"])
    for n, launch in enumerate(engine["launches"]):
        want = [0 if row[1] else computed for row, computed in zip(launch["rows"], launch["computed"])]
        assert [r[2] for r in trace.rows(n)] == want, n


@pytest.mark.parametrize("layout", ["2026", "2025"])
def test_shape_pipeline_parallel_rank0_pairs_each_micro_batch(tmp_path: Path, layout: str):
    # pp_size 2: rank 0 launches with _forward_step_inter_pp and gets each
    # micro-batch's tokens one iteration later, after launching the next one.
    spec = spec_of(*(dict(client=c, prompt=5 + 4 * c, max_tokens=3 + c, logprobs=2, stop_at=2 if c == 3 else None,
                          arrive_iter=c // 2) for c in range(1, 5)), pp_size=2, chunk_size=8)
    engine, trace = traced(tmp_path, spec, layout=layout)
    check_steps(engine, trace)
    check_tokens(engine, trace)
    assert dict(trace.info["extra"])["pp_size"] == "2"
    overlapped = [n for n in range(len(trace.steps) - 1) if trace.steps[n + 1]["start_ns"] < trace.steps[n]["end_ns"]]
    assert len(overlapped) >= len(trace.steps) // 2, overlapped
    for rid, why in engine["finishes"].items():
        assert trace.finishes[rid]["reason"] == REASONS[why].capitalize(), rid
        assert trace.finishes[rid]["output_tokens"] == len(engine_tokens(engine)[rid])
    check_adapter_state_bounded(engine)
