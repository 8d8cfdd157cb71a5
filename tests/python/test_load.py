"""toktrace.load(): the analyzer's frames as polars DataFrames, equal to what the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import toktrace
from conftest import cli_json

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "traces"


def test_frames_of_the_interference_fixture_match_the_cli() -> None:
    trace = FIXTURES / "vllm-interference" / "trace"
    f = toktrace.load(trace)
    assert isinstance(f.requests, pl.DataFrame)
    rows = cli_json("requests", str(trace))
    assert f.requests.height == len(rows) == 5
    by_id = {r["request_id"]: r for r in rows}
    for rec in f.requests.iter_rows(named=True):
        mine = by_id[rec["request_id"]]
        for key in ("prompt_tokens", "output_tokens", "ttft_ms", "max_itl_ms", "max_itl_index", "interference_ms"):
            assert rec[key] == pytest.approx(mine[key]), key
    # One token row per generated token, with the candidates as list columns.
    assert f.tokens.height == sum(r["output_tokens"] for r in rows)
    assert f.tokens.schema["top_ids"] == pl.List(pl.UInt32)
    # Steps and slices agree: every step's decode tokens are its slices' sum.
    per_step = f.slices.group_by("step").agg(pl.col("decode_tokens").sum().alias("d"))
    joined = f.steps.join(per_step, on="step", how="left").with_columns(pl.col("d").fill_null(0))
    assert (joined["decode_tokens"] == joined["d"]).all()
    assert f.steps.height == 46
    # The stalled decode tokens name the long prompt as their culprit.
    decodes = f.tokens.filter(pl.col("request_id").str.starts_with("decode-") & (pl.col("index") > 0))
    worst = decodes.sort("gap_ms").tail(4)
    assert worst["request_id"].n_unique() == 4
    assert (worst["interference_ms"] > 0.9 * worst["excess_ms"]).all()


def test_tokens_frame_carries_ids_and_logprobs() -> None:
    trace = FIXTURES / "vllm-mixed" / "trace"
    f = toktrace.load(trace)
    outputs = json.loads((FIXTURES / "vllm-mixed" / "outputs.json").read_text())
    first = next(r for r in outputs["requests"] if r["request_id"] == "0")
    toks = f.tokens.filter(pl.col("request_id") == "0").sort("index")
    assert toks["token_id"].to_list() == first["outputs"][0]["token_ids"]
    assert toks["emit_unix_ns"].null_count() == 0
    assert (toks["emit_unix_ns"] >= toks["exit_unix_ns"]).all()


def test_a_missing_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(toktrace.analysis.TraceError, match="no such file"):
        toktrace.load(tmp_path / "nope")
