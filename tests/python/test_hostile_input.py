"""Data no sane engine hands over, fed through the probe's Python API: each
call either records, or raises a clear Python exception (which the Recorder
turns into a counted error), never crashes the process, and memory stays
bounded. Afterwards the probe still records and the trace still reads."""

from __future__ import annotations

import math
import resource
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from conftest import cli_json, records, run_cli
from toktrace._native import NativeProbe, monotonic_ns
from toktrace.config import Config
from toktrace.probe import Recorder


def one_step(probe: NativeProbe, step: int, **cols: Any) -> bool:
    return probe.record_step(step, monotonic_ns(), ["a"], [0], [1], ["a"], [step], **cols)


def refused_or_recorded(call: Callable[[], Any]) -> str:
    """What a call did: "recorded", "dropped" (False), or the exception's type."""
    try:
        return "recorded" if call() else "dropped"
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError) as exc:
        assert str(exc), "an exception with no message"
        return type(exc).__name__


def test_non_finite_logprobs_are_recorded_as_given(tmp_path: Path) -> None:
    probe = NativeProbe(str(tmp_path))
    lps = [math.nan, math.inf, -math.inf]
    for i, lp in enumerate(lps):
        assert one_step(probe, i, token_ids=[7], logprobs=[lp], ranks=[1], top_k=2,
                        top_ids=[7, 8], top_logprobs=[lp, -math.inf])
    assert probe.shutdown(10.0)
    got = [s["tokens"]["logprobs"][0] for s in records(tmp_path, "Step")]
    assert len(got) == 3
    # The reader and the analysis take them without a panic.
    assert run_cli("summary", str(tmp_path)).returncode == 0
    toks = cli_json("tokens", str(tmp_path), "--request", "a")
    assert len(toks) == 3


@pytest.mark.parametrize("bad", [-1, -(2**31), 2**32, 2**63, 2**64, 2**200])
def test_token_ids_out_of_range_are_refused(tmp_path: Path, bad: int) -> None:
    probe = NativeProbe(str(tmp_path))
    for shape in ([bad], np.array([bad], dtype=object), [[bad]]):
        assert refused_or_recorded(lambda: one_step(probe, 0, token_ids=shape)) in (
            "ValueError", "OverflowError", "TypeError")
    if -(2**63) <= bad < 2**63:
        arr = np.array([bad], dtype=np.int64)
        assert refused_or_recorded(lambda: one_step(probe, 0, token_ids=arr)) == "ValueError"
    assert one_step(probe, 1, token_ids=[2**32 - 1])  # the largest id is fine
    assert probe.shutdown(10.0)
    assert [s["step_id"] for s in records(tmp_path, "Step")] == [1]


def test_a_million_token_prompt_and_step(tmp_path: Path) -> None:
    probe = NativeProbe(str(tmp_path))
    n = 1_000_000
    assert probe.record_arrivals([("long", None, None, n, None, None, None, None, -1, None, None)]) == 1
    # Its whole prefill in one step, and a run of a million tokens out of it.
    assert probe.record_step(0, monotonic_ns(), ["long"], [n], [0], ["long"], [0],
                             token_ids=np.arange(n, dtype=np.int64) % 150_000,
                             logprobs=np.zeros(n, dtype=np.float32), ranks=np.ones(n, dtype=np.int64),
                             run_counts=[n])
    assert probe.shutdown(30.0)
    [arrival] = records(tmp_path, "Arrival")
    assert arrival["prompt_tokens"] == n
    [step] = records(tmp_path, "Step")
    assert step["batch"][0]["prefill_tokens"] == n
    assert step["tokens"]["runs"][0]["count"] == n


def test_a_hundred_thousand_live_requests_keep_memory_bounded(tmp_path: Path) -> None:
    probe = NativeProbe(str(tmp_path))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    for round_ in range(10):
        ids = [f"live-{round_}-{i}" for i in range(10_000)]
        arrivals = [(rid, None, None, 100, None, None, None, None, -1, None, None) for rid in ids]
        assert probe.record_arrivals(arrivals) == len(ids)
        assert probe.record_step(round_, monotonic_ns(), ids[:256], [0] * 256, [1] * 256, ids[:256],
                                 [0] * 256, token_ids=[5] * 256)
        # Drained between rounds: a busy machine must not turn this into a
        # test of ring overflow (which drops and counts, tested elsewhere).
        assert probe.flush(60.0)
    # No finish ever came: the probe remembers them, up to its cap (2**20
    # by default; past it, it forgets them all, tested in test_native_roundtrip).
    assert probe.known_requests() == 100_000
    assert probe.shutdown(30.0)
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grew_mib < 512, f"resident memory grew {grew_mib:.0f} MiB"
    assert len(records(tmp_path, "Arrival")) >= 100_000
    assert run_cli("summary", str(tmp_path)).returncode == 0


ODD_IDS = ["", "\x00", "nul\x00inside", "tab\tand\nnewline", "é-ü-中文-🙂", "\u202eright-to-left",
           "x" * 1_000_000, "../../etc/passwd", "%s%n%x", "\ufeffbom"]


def test_request_ids_with_odd_bytes_round_trip(tmp_path: Path) -> None:
    probe = NativeProbe(str(tmp_path))
    arrivals = [(rid, rid, None, 1, None, None, None, None, -1, None, None) for rid in ODD_IDS]
    assert probe.record_arrivals(arrivals) == len(ODD_IDS)
    assert probe.record_step(0, monotonic_ns(), ODD_IDS, [1] * len(ODD_IDS), [0] * len(ODD_IDS),
                             ODD_IDS, [0] * len(ODD_IDS), token_ids=[3] * len(ODD_IDS))
    # Lone surrogates cannot be UTF-8: refused with a clear error, nothing else lost.
    assert refused_or_recorded(lambda: probe.record_arrivals(
        [("\ud800", None, None, 1, None, None, None, None, -1, None, None)])) == "UnicodeEncodeError"
    assert probe.shutdown(30.0)
    assert [a["internal_id"] for a in records(tmp_path, "Arrival")] == ODD_IDS
    reqs = cli_json("requests", str(tmp_path))
    assert sorted(r["request_id"] for r in reqs) == sorted(ODD_IDS)


BAD_COLUMNS: list[tuple[str, dict[str, Any]]] = [
    ("batch shorter than prefill", dict(batch=["a"], prefill=[1, 2], decode=[0])),
    ("prefill not a sequence", dict(prefill=5)),
    ("prefill of strings", dict(prefill=["1"])),
    ("prefill negative", dict(prefill=[-1])),
    ("None in prefill", dict(prefill=[None])),
    ("ids not strings", dict(batch=[1], runs=[1])),
    ("None as a request id", dict(batch=[None], runs=[None])),
    ("float token ids", dict(token_ids=np.array([1.5]))),
    ("object token ids", dict(token_ids=np.array([object()], dtype=object))),
    ("2-D ids of the wrong width", dict(token_ids=np.zeros((1, 3), dtype=np.int64), run_counts=[1])),
    ("more tokens than runs", dict(token_ids=[1, 2])),
    # top_k >= 0 says logprob data is there (negative, the default: none, and
    # logprob columns are not read).
    ("logprobs without ranks", dict(token_ids=[1], top_k=0, logprobs=[0.0])),
    ("logprobs of strings", dict(token_ids=[1], top_k=0, logprobs=["x"], ranks=[1])),
    ("ranks longer than ids", dict(token_ids=[1], top_k=0, logprobs=[0.0], ranks=[1, 2])),
    ("logprobs longer than ids", dict(token_ids=[1], top_k=0, logprobs=[0.0, 0.0], ranks=[1])),
    ("top ids without top logprobs", dict(token_ids=[1], logprobs=[0.0], ranks=[1], top_k=2, top_ids=[1, 2])),
    ("huge top-K", dict(token_ids=[1], top_k=2**40)),
    ("run first index negative", dict(first=[-1])),
    ("run counts mismatched", dict(token_ids=[1, 2, 3], run_counts=[1])),
    ("texts for a missing token", dict(token_ids=[1], texts=["a", "b"])),
    ("kv usage NaN", dict(kv_usage=math.nan)),
]


@pytest.mark.parametrize("what,cols", BAD_COLUMNS, ids=[b[0] for b in BAD_COLUMNS])
def test_malformed_columns_are_refused_clearly(tmp_path: Path, what: str, cols: dict[str, Any]) -> None:
    probe = NativeProbe(str(tmp_path), capture="text")
    cols = dict(cols)
    batch = cols.pop("batch", ["a"])
    prefill = cols.pop("prefill", [0])
    decode = cols.pop("decode", [1])
    runs = cols.pop("runs", ["a"])
    first = cols.pop("first", [0])
    outcome = refused_or_recorded(
        lambda: probe.record_step(0, monotonic_ns(), batch, prefill, decode, runs, first, **cols))
    # Recorded is fine only where the data is still meaningful (a NaN KV usage).
    assert outcome != "recorded" or what == "kv usage NaN", outcome
    assert one_step(probe, 1, token_ids=[9]), "the probe stopped recording after bad input"
    assert probe.shutdown(10.0)
    assert 1 in [s["step_id"] for s in records(tmp_path, "Step")]


def test_through_the_recorder_every_refusal_is_counted_and_the_engine_never_sees_one(tmp_path: Path,
                                                                                  capsys) -> None:
    rec = Recorder(Config(dir=str(tmp_path), capture="text"))
    tried = 0
    for _, cols in BAD_COLUMNS:
        cols = dict(cols)
        batch, prefill = cols.pop("batch", ["a"]), cols.pop("prefill", [0])
        decode, runs, first = cols.pop("decode", [1]), cols.pop("runs", ["a"]), cols.pop("first", [0])
        if "kv_usage" in cols:
            continue
        assert rec.step(0, monotonic_ns(), batch, prefill, decode, runs, first, **cols) is False
        tried += 1
    assert rec.errors == tried
    assert capsys.readouterr().err.count("toktrace:") == 1
    assert rec.step(1, monotonic_ns(), ["a"], [0], [1], ["a"], [0], token_ids=[5]) is True
    rec.shutdown()
