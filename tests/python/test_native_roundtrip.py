"""Python calls -> segment files -> Rust reader: what goes in comes back out,
whatever shape the engine hands over (numpy arrays, strided views, nested
lists, flat lists), and capture level and top-K cap are applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import cli_json, records
from toktrace._native import NativeProbe, monotonic_ns
from toktrace.probe import Recorder
from toktrace.config import Config

N_REQ = 4
K = 5


def engine_arrays(step: int):
    rng = np.random.default_rng(step)
    # vLLM hands [n, k+1] arrays whose column 0 is the sampled token.
    ids = rng.integers(0, 150_000, size=(N_REQ, K + 1), dtype=np.int64)
    lps = -np.sort(rng.random((N_REQ, K + 1), dtype=np.float32), axis=1) * 10
    ranks = rng.integers(1, 4, size=N_REQ, dtype=np.int64)
    return ids, lps, ranks


def shapes(ids, lps, ranks):
    """The same data as each engine shape."""
    yield "numpy-strided", dict(token_ids=ids[:, 0], logprobs=lps[:, 0], ranks=ranks,
                                top_ids=ids[:, 1:], top_logprobs=lps[:, 1:])
    yield "numpy-contiguous", dict(token_ids=np.ascontiguousarray(ids[:, 0]).astype(np.int32),
                                   logprobs=lps[:, 0].astype(np.float64), ranks=ranks.astype(np.uint32),
                                   top_ids=np.ascontiguousarray(ids[:, 1:]).ravel(),
                                   top_logprobs=np.ascontiguousarray(lps[:, 1:]).ravel())
    yield "nested-lists", dict(token_ids=[[int(x)] for x in ids[:, 0]], logprobs=lps[:, 0].tolist(),
                               ranks=ranks.tolist(), top_ids=ids[:, 1:].tolist(),
                               top_logprobs=lps[:, 1:].tolist())
    yield "flat-lists", dict(token_ids=ids[:, 0].tolist(), logprobs=lps[:, 0].tolist(), ranks=ranks.tolist(),
                             top_ids=ids[:, 1:].ravel().tolist(), top_logprobs=lps[:, 1:].ravel().tolist())


def record(probe: NativeProbe, step: int, cols: dict, **extra) -> bool:
    reqs = [f"req-{i}" for i in range(N_REQ)]
    return probe.record_step(
        step, monotonic_ns(), reqs, [0, 0, 7, 0], [1, 1, 0, 1], reqs, [step] * N_REQ,
        top_k=K, waiting=2, running=N_REQ, kv_usage=0.25, **cols, **extra,
    )


@pytest.mark.parametrize("shape", ["numpy-strided", "numpy-contiguous", "nested-lists", "flat-lists"])
def test_every_engine_shape_round_trips(tmp_path: Path, shape: str):
    probe = NativeProbe(str(tmp_path))
    ids, lps, ranks = engine_arrays(3)
    cols = dict(shapes(ids, lps, ranks))[shape]
    assert record(probe, 3, cols)
    assert probe.shutdown(10.0)
    [step] = records(tmp_path, "Step")
    t = step["tokens"]
    assert t["ids"] == ids[:, 0].tolist()
    assert t["ranks"] == ranks.tolist()
    assert t["top_ids"] == ids[:, 1:].ravel().tolist()
    np.testing.assert_array_equal(np.float32(t["logprobs"]), lps[:, 0])
    np.testing.assert_array_equal(np.float32(t["top_logprobs"]), lps[:, 1:].ravel())
    assert [r["top_k"] for r in t["runs"]] == [K] * N_REQ
    assert [b["prefill_tokens"] for b in step["batch"]] == [0, 0, 7, 0]
    assert step["waiting"] == 2 and step["running"] == N_REQ and step["kv_usage"] == 0.25
    assert step["start_ns"] <= step["end_ns"]


def test_logprob_mask_and_top_k_cap(tmp_path: Path):
    probe = NativeProbe(str(tmp_path), top_k_cap=2)
    ids, lps, ranks = engine_arrays(1)
    cols = dict(shapes(ids, lps, ranks))["numpy-strided"]
    assert record(probe, 1, cols, run_has_logprobs=[True, False, True, False])
    probe.shutdown(10.0)
    t = records(tmp_path, "Step")[0]["tokens"]
    assert [r["top_k"] for r in t["runs"]] == [2, None, 2, None]
    assert t["ids"] == ids[:, 0].tolist()  # every token keeps its id
    assert t["ranks"] == ranks[[0, 2]].tolist()
    assert t["top_ids"] == ids[[0, 2], 1:3].ravel().tolist()


def test_logprob_flags_may_be_the_engines_objects(tmp_path: Path):
    # vLLM's per-output logprobs objects, None where a request asked for none.
    probe = NativeProbe(str(tmp_path))
    ids, lps, ranks = engine_arrays(1)
    cols = dict(shapes(ids, lps, ranks))["numpy-strided"]
    assert record(probe, 1, cols, run_has_logprobs=[object(), None, "lists", False])
    probe.shutdown(10.0)
    t = records(tmp_path, "Step")[0]["tokens"]
    assert [r["top_k"] for r in t["runs"]] == [K, None, K, None]
    assert t["ranks"] == ranks[[0, 2]].tolist()


def test_logprob_rows_of_the_flagged_runs_only(tmp_path: Path):
    # Columns may also hold rows only for the runs flagged with logprobs
    # (SGLang and TensorRT-LLM build them that way): same trace as the mask.
    probe = NativeProbe(str(tmp_path), top_k_cap=2)
    ids, lps, ranks = engine_arrays(1)
    rows = [0, 2]
    cols = dict(token_ids=ids[:, 0], logprobs=lps[rows, 0], ranks=ranks[rows],
                top_ids=ids[rows, 1:], top_logprobs=lps[rows, 1:])
    assert record(probe, 1, cols, run_has_logprobs=[True, False, True, False])
    probe.shutdown(10.0)
    t = records(tmp_path, "Step")[0]["tokens"]
    assert [r["top_k"] for r in t["runs"]] == [2, None, 2, None]
    assert t["ids"] == ids[:, 0].tolist()
    assert t["ranks"] == ranks[rows].tolist()
    assert t["top_ids"] == ids[rows, 1:3].ravel().tolist()
    np.testing.assert_array_equal(np.float32(t["logprobs"]), lps[rows, 0])


@pytest.mark.parametrize("named", ["list", "dict"])
def test_vllm_matrices_with_named_rows(tmp_path: Path, named: str):
    # vLLM hands [rows, k+1] matrices with the sampled token in column 0, its
    # rows in its own order; the probe picks each run's rows itself, from a
    # row per run or from vLLM's request-id -> row dict.
    probe = NativeProbe(str(tmp_path), top_k_cap=3)
    ids, lps, ranks = engine_arrays(5)
    runs = ["req-2", "req-0", "req-3"]  # runs in another order than the rows
    rows = [2, 0, 3]
    named_rows = rows if named == "list" else {"req-0": 0, "req-1": 1, "req-2": 2, "req-3": 3}
    assert probe.record_step(
        5, monotonic_ns(), runs, [0, 0, 0], [1, 1, 1], runs, [0, 0, 0],
        token_ids=[[int(ids[r, 0])] for r in rows], top_k=K, top_ids=ids, top_logprobs=lps,
        ranks=ranks, sampled_first=True, logprob_rows=named_rows, run_has_logprobs=[True, None, True])
    probe.shutdown(10.0)
    t = records(tmp_path, "Step")[0]["tokens"]
    kept = [2, 3]  # the rows of the flagged runs
    assert [r["top_k"] for r in t["runs"]] == [3, None, 3]
    assert t["ids"] == ids[rows, 0].tolist()
    assert t["ranks"] == ranks[kept].tolist()
    assert t["top_ids"] == ids[kept, 1:4].ravel().tolist()
    np.testing.assert_array_equal(np.float32(t["logprobs"]), lps[kept, 0])
    np.testing.assert_array_equal(np.float32(t["top_logprobs"]), lps[kept, 1:4].ravel())


def test_named_rows_out_of_range_are_refused(tmp_path: Path):
    probe = NativeProbe(str(tmp_path))
    ids, lps, ranks = engine_arrays(6)
    with pytest.raises(ValueError, match="logprob row"):
        probe.record_step(6, monotonic_ns(), ["a"], [0], [2], None, [0], token_ids=[1, 2], run_counts=[2],
                          top_k=K, top_ids=ids, top_logprobs=lps, ranks=ranks, sampled_first=True,
                          logprob_rows=[N_REQ - 1])
    probe.shutdown(1.0)


@pytest.mark.parametrize("bad", [-1, 1 << 32])
@pytest.mark.parametrize("path", ["copied", "gathered"])
def test_candidate_ids_out_of_range_are_refused(tmp_path: Path, path: str, bad: int):
    # Anywhere in a row of a top-5 table, whether the table is copied whole
    # or its rows are picked per run.
    probe = NativeProbe(str(tmp_path))
    ids, lps, ranks = engine_arrays(7)
    ids[2, 4] = bad
    reqs = [f"req-{i}" for i in range(N_REQ)]
    if path == "copied":
        cols = dict(token_ids=ids[:, 0], logprobs=lps[:, 0], top_ids=ids[:, 1:], top_logprobs=lps[:, 1:])
    else:
        cols = dict(token_ids=[[int(x)] for x in ids[:, 0]], top_ids=ids, top_logprobs=lps, sampled_first=True,
                    logprob_rows={r: i for i, r in enumerate(reqs)})
    with pytest.raises(ValueError, match="not a valid token id|out of range"):
        probe.record_step(7, monotonic_ns(), reqs, [0] * N_REQ, [1] * N_REQ, None, None, top_k=K, ranks=ranks,
                          **cols)
    ids[2, 4] = 7  # the same call with the value in range is taken
    assert probe.record_step(8, monotonic_ns(), reqs, [0] * N_REQ, [1] * N_REQ, None, None, top_k=K,
                             ranks=ranks, **cols)
    probe.shutdown(10.0)
    [step] = records(tmp_path, "Step")
    assert step["tokens"]["top_ids"] == ids[:, 1:].ravel().tolist()


def test_output_indices_continue_per_request(tmp_path: Path):
    # run_first_index=None: the probe continues each request from the outputs
    # it recorded; a finish without a count gets that count. An empty token
    # list is a run of 0 tokens, dropped.
    probe = NativeProbe(str(tmp_path))
    probe.record_step(0, monotonic_ns(), ["a", "b"], [4, 4], [0, 0], None, None, token_ids=[1, 2])
    # One token list per run: the counts come from the lists.
    probe.record_step(1, monotonic_ns(), ["b", "a"], [0, 0], [2, 1], None, None, token_ids=[[3, 4], [5]])
    probe.record_step(2, monotonic_ns(), ["a"], [0], [1], None, [7], token_ids=[6])  # given: kept
    probe.record_step(3, monotonic_ns(), ["a", "b", "c"], [0, 0, 3], [1, 1, 0], None, None,
                      token_ids=[[7], [8], []])
    assert probe.record_finishes([("a", "stop", None), ("b", "length", 99), ("never-ran", "abort", None)]) == 3
    probe.shutdown(10.0)
    firsts = [[(r["req"], r["first_index"], r["count"]) for r in s["tokens"]["runs"]]
              for s in records(tmp_path, "Step")]
    a, b = records(tmp_path, "Arrival")[0]["req"], records(tmp_path, "Arrival")[1]["req"]
    assert firsts == [[(a, 0, 1), (b, 0, 1)], [(b, 1, 2), (a, 1, 1)], [(a, 7, 1)], [(a, 8, 1), (b, 3, 1)]]
    assert [f["output_tokens"] for f in records(tmp_path, "Finish")] == [9, 99, None]


def test_the_probe_splits_scheduled_tokens_into_prefill_and_decode(tmp_path: Path):
    # scheduled/computed instead of prefill/decode: the prompt length comes
    # from the arrival, the outputs from the runs recorded.
    probe = NativeProbe(str(tmp_path))
    probe.record_arrivals([("a", None, None, 10, None, None, None, None, None, None, None),
                           ("b", None, None, 6, None, None, None, None, None, None, None)])

    def step(i, reqs, scheduled, computed, runs=None, counts=None):
        assert probe.record_step(i, monotonic_ns(), reqs, None, None, runs, None, scheduled=scheduled,
                                 computed=computed, run_counts=counts)

    step(0, ["a", "b"], [8, 6], [0, 0], ["b"], [1])    # a: first chunk; b: whole prompt, 1 token
    step(1, ["a", "b"], [2, 1], [8, 6], ["a", "b"], [1, 1])  # a: last chunk, 1 token; b: decode
    step(2, ["a", "b"], [1, 1], [10, 7])               # both decode
    step(3, ["b"], [9], [0])                           # b preempted: prompt + 3 outputs recomputed
    step(4, ["c"], [5], [0], [], [])                   # no arrival seen: no outputs yet, prefill
    probe.shutdown(10.0)
    got = [[(b["prefill_tokens"], b["decode_tokens"]) for b in s["batch"]] for s in records(tmp_path, "Step")]
    assert got == [[(8, 0), (6, 0)], [(2, 0), (0, 1)], [(0, 1), (0, 1)], [(9, 0)], [(5, 0)]]


def test_scheduled_may_be_the_engines_dict(tmp_path: Path):
    # vLLM's num_scheduled_tokens as it is: the probe looks each batch id up.
    probe = NativeProbe(str(tmp_path))
    probe.record_arrivals([("a", None, None, 4, None, None, None, None, None, None, None)])
    assert probe.record_step(0, monotonic_ns(), ["a", "b"], None, None, [], [],
                             scheduled={"b": 3, "a": 4, "other": 9}, computed=[0, 0])
    with pytest.raises(ValueError, match="no entry in the scheduled dict"):
        probe.record_step(1, monotonic_ns(), ["a", "c"], None, None, [], [],
                          scheduled={"a": 1}, computed=[4, 0])
    probe.shutdown(10.0)
    [step] = records(tmp_path, "Step")
    assert [(b["prefill_tokens"], b["decode_tokens"]) for b in step["batch"]] == [(4, 0), (3, 0)]


@pytest.mark.parametrize("order", ["same", "reversed", "shuffled", "extra keys", "deleted keys", "equal copies",
                                   "a dict subclass", "diverging midway", "odd values midway"])
def test_dict_lookups_follow_any_order(tmp_path: Path, order: str):
    # The probe walks the dict alongside the ids while they match its order
    # and looks the rest up: every order must give the dict's values.
    import random

    batch = [f"req-{i}" for i in range(40)]
    keys = list(batch)
    if order == "reversed":
        keys.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(keys)
    elif order == "extra keys":
        keys = [k for b in batch for k in (b, b + "-other")]
    elif order == "equal copies":
        keys = ["".join(list(b)) for b in batch]  # equal text, other objects
    elif order == "diverging midway":
        keys = batch[:25] + batch[25:][::-1]
    scheduled = {k: 1 + i for i, k in enumerate(keys)}
    if order == "odd values midway":
        # Values that are not plain ints stop the straight walk; the rest is
        # still read right.
        scheduled[batch[10]] = np.int64(11)
        scheduled[batch[20]] = True
    if order == "a dict subclass":
        from collections import OrderedDict

        scheduled = OrderedDict(scheduled)
    if order == "deleted keys":
        # Deleted entries stay in the table, empty, between the live ones.
        scheduled = {k: 1 + i for i, k in enumerate(k for b in batch for k in (b + "-gone", b))}
        for b in batch:
            del scheduled[b + "-gone"]
    probe = NativeProbe(str(tmp_path))
    assert probe.record_step(0, monotonic_ns(), batch, None, None, [], [], scheduled=scheduled,
                             computed=[0] * len(batch))
    probe.shutdown(10.0)
    [step] = records(tmp_path, "Step")
    assert [b["prefill_tokens"] for b in step["batch"]] == [scheduled[b] for b in batch]


def test_scheduled_without_computed_is_refused(tmp_path: Path):
    probe = NativeProbe(str(tmp_path))
    with pytest.raises(ValueError, match="scheduled and computed"):
        probe.record_step(0, monotonic_ns(), ["a"], None, None, [], [], scheduled=[3])
    probe.shutdown(1.0)


def test_capture_metadata_keeps_no_token_data(tmp_path: Path):
    probe = NativeProbe(str(tmp_path), capture="metadata")
    ids, lps, ranks = engine_arrays(2)
    record(probe, 2, dict(shapes(ids, lps, ranks))["numpy-strided"])
    probe.shutdown(10.0)
    t = records(tmp_path, "Step")[0]["tokens"]
    assert t["ids"] == [] and t["logprobs"] == [] and t["top_ids"] == []
    assert [r["count"] for r in t["runs"]] == [1] * N_REQ  # timing and counts stay


def test_capture_text_keeps_texts_and_tokens_drops_them(tmp_path: Path):
    for level, expect in (("text", ["a", " b", "<s>", "\u00e9"]), ("tokens", [])):
        d = tmp_path / level
        probe = NativeProbe(str(d), capture=level)
        ids, lps, ranks = engine_arrays(4)
        record(probe, 4, dict(shapes(ids, lps, ranks))["flat-lists"], texts=["a", " b", "<s>", "\u00e9"])
        probe.shutdown(10.0)
        assert records(d, "Step")[0]["tokens"]["texts"] == expect


def test_lifecycle_and_emits(tmp_path: Path):
    probe = NativeProbe(str(tmp_path))
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert probe.record_arrivals([
        ("cmpl-1-abcd", "cmpl-1", tp, 12, 0.7, 0.95, 40, 64, 5, 1234, 1000),
        ("cmpl-2-ef01", None, "not-a-traceparent", None, None, None, None, None, -1, None, None),
    ]) == 2
    assert probe.record_emits(["cmpl-1-abcd", "cmpl-2-ef01"], np.array([0, 3]), [1, 2])
    assert probe.record_finishes([("cmpl-1-abcd", "stop", 9), ("cmpl-2-ef01", "repetition", None)]) == 2
    assert probe.known_requests() == 0
    probe.shutdown(10.0)
    a1, a2 = records(tmp_path, "Arrival")
    assert a1["internal_id"] == "cmpl-1-abcd" and a1["external_id"] == "cmpl-1"
    assert bytes(a1["trace_id"]).hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert bytes(a1["parent_span_id"]).hex() == "00f067aa0ba902b7"
    assert a1["arrival_ns"] == 1000 and a1["prompt_tokens"] == 12
    assert a1["params"] == {"temperature": pytest.approx(0.7), "top_p": pytest.approx(0.95), "top_k": 40,
                            "max_tokens": 64, "logprobs": 5, "seed": 1234}
    assert a2["trace_id"] is None and a2["params"]["logprobs"] is None
    [emit] = records(tmp_path, "Emit")
    assert [(e["req"], e["first_index"], e["count"]) for e in emit["emits"]] == [(a1["req"], 0, 1), (a2["req"], 3, 2)]
    f1, f2 = records(tmp_path, "Finish")
    assert f1["reason"] == "Stop" and f1["output_tokens"] == 9
    assert f2["reason"] == {"Other": "repetition"}


def test_a_request_first_seen_in_a_step_gets_an_arrival(tmp_path: Path):
    probe = NativeProbe(str(tmp_path))
    probe.record_step(0, monotonic_ns(), ["x"], [5], [0], [], [])
    probe.shutdown(10.0)
    [arrival] = records(tmp_path, "Arrival")
    assert arrival["internal_id"] == "x"
    assert records(tmp_path, "Step")[0]["batch"][0]["req"] == arrival["req"]


def test_bad_input_never_raises_through_the_recorder(tmp_path: Path, capsys):
    rec = Recorder(Config(dir=str(tmp_path)))
    # Columns that disagree in length, wrong types, negative ids.
    assert rec.step(0, monotonic_ns(), ["a", "b"], [1], [0, 0], [], []) is False
    assert rec.step(1, monotonic_ns(), [1, 2], [1, 1], [0, 0], [], []) is False
    assert rec.step(2, monotonic_ns(), ["a"], [0], [1], ["a"], [0], token_ids=[-5]) is False
    assert rec.step(3, monotonic_ns(), ["a"], [0], [1], ["a"], [0], token_ids=[5], top_k=2) is False
    assert rec.errors == 4
    assert capsys.readouterr().err.count("toktrace:") == 1
    # And it keeps working afterwards.
    assert rec.step(4, monotonic_ns(), ["a"], [0], [1], ["a"], [0], token_ids=[5]) is True
    rec.shutdown()
    assert [s["step_id"] for s in records(tmp_path, "Step")] == [4]


def test_errors_of_direct_native_calls_count_like_the_recorders_own(tmp_path: Path, capsys):
    # Adapters call record_step on `rec.native` directly and report failures
    # with `rec.failed`: one warning, a count, and tracing off past the limit.
    from toktrace.probe import MAX_ERRORS

    rec = Recorder(Config(dir=str(tmp_path)))
    for _ in range(MAX_ERRORS - 1):
        try:
            rec.native.record_step(0, monotonic_ns(), ["a"], [1], [0, 0], [], [])
        except ValueError as exc:
            rec.failed("record_step", exc)
    assert rec.errors == MAX_ERRORS - 1 and rec.enabled
    assert capsys.readouterr().err.count("toktrace: record_step failed") == 1
    rec.failed("record_step", ValueError("once more"))
    assert not rec.enabled
    rec.shutdown()


def test_past_the_request_cap_every_key_stays_consistent(tmp_path: Path):
    # Finishes that never come: past `max_requests` the probe forgets every
    # request, between calls. A step's batch larger than the cap is interned
    # whole; the next step starts afresh with new keys (and arrival records)
    # for everyone, each key's output indices still counting from its first.
    probe = NativeProbe(str(tmp_path), max_requests=4)
    reqs = [f"r{i}" for i in range(6)]
    counts = [1, 2, 3, 4, 5, 6]
    for step in range(3):
        assert probe.record_step(step, monotonic_ns(), reqs, [0] * 6, counts, None, None,
                                 token_ids=[[7] * c for c in counts])
    probe.shutdown(10.0)
    arrivals = {a["req"]: a["internal_id"] for a in records(tmp_path, "Arrival")}
    seen: dict[int, int] = {}
    for s in records(tmp_path, "Step"):
        keys = [b["req"] for b in s["batch"]]
        assert len(set(keys)) == 6
        assert [arrivals[k] for k in keys] == reqs
        assert [r["req"] for r in s["tokens"]["runs"]] == keys
        for run in s["tokens"]["runs"]:
            assert run["first_index"] == seen.get(run["req"], 0)
            seen[run["req"]] = run["first_index"] + run["count"]


def test_errors_in_tracing_code_are_counted_by_hook_in_the_trace(tmp_path: Path, capsys):
    # What an adapter's hook raised (through its Guard) and what a native call
    # refused are counted by where they happened, in the trace itself; past
    # the limit tracing stops, and the trace says so.
    from toktrace.adapters._common import Guard
    from toktrace.probe import MAX_ERRORS
    import toktrace.probe as probe_mod

    rec = Recorder(Config(dir=str(tmp_path)))
    old = probe_mod._recorder, probe_mod._resolved
    probe_mod._recorder, probe_mod._resolved = rec, True
    try:
        assert rec.step(0, monotonic_ns(), ["a"], [3], [0], [], []) is True
        guard = Guard("vllm")
        guard.failed("Scheduler.schedule", KeyError("req-9"))
        guard.failed("Scheduler.schedule", KeyError("req-10"))
        rec.step(1, monotonic_ns(), ["a", "b"], [1], [0, 0], [], [])  # mismatched columns
        rec.flush()
        info = cli_json("info", str(tmp_path))
        [p] = info["processes"]
        assert p["adapter_errors"] == {"total": 3, "disabled": False, "hooks": [
            {"hook": "vllm Scheduler.schedule", "count": 2, "first_error": "KeyError: 'req-9'"},
            {"hook": "record_step", "count": 1, "first_error": p["adapter_errors"]["hooks"][1]["first_error"]}]}
        assert "ValueError" in p["adapter_errors"]["hooks"][1]["first_error"]
        for _ in range(MAX_ERRORS):
            guard.failed("OutputProcessor.process_outputs", TypeError("bad"))
        assert not rec.enabled
        assert rec.step(2, monotonic_ns(), ["a"], [0], [1], [], []) is False
    finally:
        probe_mod._recorder, probe_mod._resolved = old
    rec.shutdown()
    err = capsys.readouterr().err
    assert err.count("failed:") == 1 and err.count("tracing is off for this process") == 1
    summary = cli_json("summary", str(tmp_path))
    [row] = summary["processes"]
    assert row["adapter_errors"] == 3 + MAX_ERRORS and row["adapter_disabled"] is True
    assert any("switched tracing off" in w and "vllm Scheduler.schedule ×2" in w for w in summary["warnings"])
