"""The fleet dataset (`toktrace export … --format parquet --dataset ROOT`),
read by the engines users have: DuckDB and polars, as they are, with Hive
partitioning. Real engine traces (the committed vLLM and SGLang fixtures)
and a multi-segment trace written through the real probe, exported in pieces
as a periodic export would see it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import cli_json, run_cli

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "traces"
TABLES = ("steps", "slices", "tokens", "requests", "interference")

# A probe driver standing in for an engine: 8 requests decoding, one token
# each per step, one finishing and another arriving every 25 steps; small
# segments, so a few thousand steps make several.
DRIVER = r"""
import sys
from toktrace._native import NativeProbe, monotonic_ns

probe = NativeProbe(sys.argv[1], segment_bytes=64 * 1024, flush_ms=50)
probe.record_process("synthetic", "1.0", "tiny", None, role="engine-core")
steps = int(sys.argv[2])
live = [f"r{i}" for i in range(8)]
probe.record_arrivals([(r, None, None, 16, 0.0, None, None, None, None, None, None) for r in live])
nxt, out = 8, [0] * 8
for step in range(steps):
    if step % 25 == 24:
        probe.record_finishes([(live[0], "stop", out[0])])
        new = f"r{nxt}"
        probe.record_arrivals([(new, None, None, 16, 0.0, None, None, None, None, None, None)])
        live = live[1:] + [new]
        out = out[1:] + [0]
        nxt += 1
    probe.record_step(step, monotonic_ns(), live, [0] * 8, [1] * 8, live, list(out),
                      token_ids=[(step * 7 + i) % 1000 for i in range(8)])
    out = [o + 1 for o in out]
assert probe.shutdown(30.0)
"""


def drive(trace: Path, steps: int) -> None:
    subprocess.run([sys.executable, "-c", DRIVER, str(trace), str(steps)], check=True, timeout=300)


def add(root: Path, *traces: Path) -> subprocess.CompletedProcess[str]:
    proc = run_cli("export", *map(str, traces), "--format", "parquet", "--dataset", str(root))
    assert proc.returncode == 0, proc.stderr
    return proc


def q(sql: str) -> list[tuple]:
    """The rows of a DuckDB query."""
    return duckdb.connect().execute(sql).fetchall()


def table(root: Path, name: str) -> str:
    return f"read_parquet('{root}/{name}/**/*.parquet', hive_partitioning = true, union_by_name = true)"


# Columns judged against the step-time model fitted on the trace as it stood
# at export time: a piece exported early was judged on less.
JUDGED = ("excess_ms", "interference_ms", "stalls", "fluidity_index", "flags")


def rows(root: Path, name: str, order: str, recorded_only: bool = False) -> list[tuple]:
    """Every row of a table, sorted, as DuckDB reads it; with `recorded_only`,
    without the columns judged against the step-time model."""
    columns = [r[0] for r in q(f"DESCRIBE SELECT * FROM {table(root, name)}")]
    drop = ["day", "host"] + [c for c in JUDGED if recorded_only and c in columns]
    return q(f"SELECT * EXCLUDE ({', '.join(drop)}) FROM {table(root, name)} ORDER BY {order}")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_real_engine_traces_land_partitioned_with_their_provenance(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    traces = [FIXTURES / "vllm-mixed" / "trace", FIXTURES / "sglang-mixed" / "trace"]
    add(root, *traces)
    schema = json.loads((root / "_toktrace" / "dataset.json").read_text())
    assert schema["schema"] == 1
    for trace in traces:
        summary = cli_json("summary", str(trace))
        engine = next(p for p in summary["processes"] if p["engine"])
        got = q(
            f"SELECT capture_id, any_value(engine), any_value(engine_version), any_value(host), "
            f"any_value(day), count(*) FROM {table(root, 'steps')} "
            f"WHERE engine = '{engine['engine']}' GROUP BY capture_id")
        assert len(got) == 1, got
        capture, eng, version, host, day, steps = got[0]
        assert (eng, version) == (engine["engine"], engine["engine_version"])
        assert host == engine["host"]
        assert steps == summary["steps"]
        assert len(capture) == 16
        # Partitioned by the capture's start day and host, one directory each.
        assert (root / "steps" / f"day={day}" / f"host={host}").is_dir()
        requests = cli_json("requests", str(trace), "--limit", "100000")
        finished = [r for r in requests if r["finish_reason"] is not None]
        n, tokens = q(
            f"SELECT count(*), sum(output_tokens) FROM {table(root, 'requests')} "
            f"WHERE capture_id = '{capture}'")[0]
        assert n == len(finished)
        assert tokens == sum(r["output_tokens"] for r in finished)


def test_a_rerun_adds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    trace = FIXTURES / "vllm-interference" / "trace"
    add(root, trace)
    before = files(root)
    proc = add(root, trace)
    assert "nothing new" in proc.stderr
    assert files(root) == before


def test_exported_in_pieces_equals_exported_whole(tmp_path: Path) -> None:
    # What a periodic export sees of a trace being written: its segments
    # arriving a few at a time. The union of the pieces is the whole.
    whole = tmp_path / "whole"
    drive(whole, 3000)
    [proc_dir] = [p for p in whole.iterdir() if p.is_dir()]
    segments = sorted(proc_dir.glob("seg-*.tts"))
    assert len(segments) >= 4, segments
    growing = tmp_path / "growing" / proc_dir.name
    growing.mkdir(parents=True)
    pieces = tmp_path / "pieces"
    said = []
    for upto in (1, len(segments) // 2, len(segments) - 1, len(segments)):
        for seg in segments[:upto]:
            if not (growing / seg.name).exists():
                shutil.copy(seg, growing / seg.name)
        said.append(add(pieces, growing.parent).stderr)
    # Later exports read only the segments still needed, not the whole trace.
    read = [re.search(r"reading (\d+) of (\d+) segments", s) for s in said[2:]]
    assert all(m and int(m[1]) < int(m[2]) for m in read), said
    at_once = tmp_path / "at-once"
    add(at_once, whole)
    order = {"steps": "process, step", "slices": "process, step, request_id", "tokens": "request_id, index",
             "requests": "request_id", "interference": "request_id, index, culprit_request_id"}
    for name in ("steps", "slices", "tokens", "requests"):
        got, want = rows(pieces, name, order[name], True), rows(at_once, name, order[name], True)
        assert got == want, name
    # Several parts, one capture.
    assert len(list((pieces / "steps").rglob("*.parquet"))) > 1
    assert q(f"SELECT count(DISTINCT capture_id) FROM {table(pieces, 'steps')}")[0] == (1,)


def test_segments_deleted_after_export_keep_their_rows(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    drive(trace, 3000)
    root = tmp_path / "fleet"
    add(root, trace)
    steps_before = q(f"SELECT count(*) FROM {table(root, 'steps')}")[0]
    # The disk budget deletes the oldest segment; the next export adds nothing
    # twice and takes nothing away.
    [proc_dir] = [p for p in trace.iterdir() if p.is_dir()]
    min(proc_dir.glob("seg-*.tts")).unlink()
    add(root, trace)
    assert q(f"SELECT count(*) FROM {table(root, 'steps')}")[0] == steps_before
    dupes = q(f"SELECT count(*) - count(DISTINCT (process, step)) FROM {table(root, 'steps')}")[0]
    assert dupes == (0,)


def test_two_exports_at_once_do_not_duplicate(tmp_path: Path) -> None:
    trace = FIXTURES / "sglang-interference" / "trace"
    root = tmp_path / "fleet"
    cmd = ["export", str(trace), "--format", "parquet", "--dataset", str(root)]
    from conftest import toktrace_cli
    procs = [subprocess.Popen([toktrace_cli(), *cmd], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    single = tmp_path / "single"
    add(single, trace)
    for name, order in (("steps", "process, step"), ("requests", "request_id")):
        assert rows(root, name, order) == rows(single, name, order), name


def test_polars_and_duckdb_give_the_same_answers(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    add(root, *(FIXTURES / name / "trace" for name in ("vllm-mixed", "vllm-preempt", "sglang-mixed")))
    # The worst p99 inter-token latency per engine and capture, read with
    # Hive partitioning by both.
    sql = (f"SELECT engine, capture_id, host, count(*) AS requests, max(itl_p99_ms) AS worst_itl_p99_ms "
           f"FROM {table(root, 'requests')} GROUP BY engine, capture_id, host ORDER BY engine, capture_id")
    by_duckdb = q(sql)
    by_polars = (pl.scan_parquet(root / "requests" / "**" / "*.parquet", hive_partitioning=True)
                 .group_by("engine", "capture_id", "host")
                 .agg(pl.len().alias("requests"), pl.col("itl_p99_ms").max().alias("worst_itl_p99_ms"))
                 .sort("engine", "capture_id").collect().rows())
    assert len(by_duckdb) == 3
    assert [r[:4] for r in by_duckdb] == [r[:4] for r in by_polars]
    for d, p in zip(by_duckdb, by_polars):
        assert d[4] == pytest.approx(p[4], rel=1e-12)


def test_bad_requests_are_refused_with_usage_errors(tmp_path: Path) -> None:
    trace = str(FIXTURES / "vllm-mixed" / "trace")
    csv = run_cli("export", trace, "--format", "csv", "--dataset", str(tmp_path / "x"))
    assert csv.returncode == 2 and "--dataset takes --format parquet" in csv.stderr
    both = run_cli("export", trace, "--format", "parquet", "--dataset", str(tmp_path / "x"), "--out", "y")
    assert both.returncode == 2
    two = run_cli("export", trace, trace, "--format", "parquet", "--out", str(tmp_path / "y"))
    assert two.returncode == 2 and "except with --dataset" in two.stderr
    missing = run_cli("export", str(tmp_path / "nope"), trace, "--format", "parquet", "--dataset", str(tmp_path / "z"))
    assert missing.returncode != 0 and "nope" in missing.stderr
    # The trace that exists still went in.
    assert list((tmp_path / "z" / "steps").rglob("*.parquet"))
    newer = tmp_path / "newer"
    (newer / "_toktrace").mkdir(parents=True)
    (newer / "_toktrace" / "dataset.json").write_text('{"schema": 99, "written_by": "9.9.9"}')
    refused = run_cli("export", trace, "--format", "parquet", "--dataset", str(newer))
    assert refused.returncode != 0 and "schema 99" in refused.stderr


def test_the_documented_schema_is_the_one_written(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "fleet.md").read_text()
    block = doc.split("<!-- dataset-schema -->")[1].split("<!-- /dataset-schema -->")[0]
    documented = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = [c.strip() for c in cells[1].split(",")]
    assert set(documented) == set(TABLES)
    root = tmp_path / "fleet"
    add(root, FIXTURES / "vllm-interference" / "trace")
    provenance = ["capture_id", "engine", "engine_version", "model"]
    for name in TABLES:
        columns = [r[0] for r in q(f"DESCRIBE SELECT * FROM {table(root, name)}")]
        assert columns == provenance + documented[name] + ["day", "host"], name
