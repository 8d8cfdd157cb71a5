"""`toktrace export`: every format read back by the tools an incident review uses
(polars, DuckDB, pyarrow, Perfetto's own protos) and checked against the CLI's JSON."""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import cli_json, run_cli, second_user, toktrace_cli

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "traces"
INTERFERENCE = FIXTURES / "vllm-interference" / "trace"


def export(trace: Path, fmt: str, out: Path, *extra: str) -> None:
    proc = run_cli("export", str(trace), "--format", fmt, "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr


def test_parquet_export_reads_back_in_polars_and_duckdb(tmp_path: Path) -> None:
    import duckdb
    import pyarrow.parquet as pq

    export(INTERFERENCE, "parquet", tmp_path)
    rows = cli_json("requests", str(INTERFERENCE))
    requests = pl.read_parquet(tmp_path / "requests.parquet")
    assert sorted(requests["request_id"].to_list()) == sorted(r["request_id"] for r in rows)
    tokens = pl.read_parquet(tmp_path / "tokens.parquet")
    assert tokens.height == sum(r["output_tokens"] for r in rows)
    # DuckDB reads the same files with SQL.
    con = duckdb.connect()
    worst = con.execute(
        f"select request_id, max_itl_ms from '{tmp_path / 'requests.parquet'}' "
        "where request_id like 'decode-%' order by max_itl_ms desc limit 1"
    ).fetchone()
    assert worst is not None
    assert worst[1] == pytest.approx(max(r["max_itl_ms"] for r in rows if r["request_id"].startswith("decode-")))
    n = con.execute(f"select count(*) from '{tmp_path / 'steps.parquet'}'").fetchone()
    assert n is not None and n[0] == 46
    # The trace's metadata rides in the Parquet key-value metadata.
    meta = json.loads(pq.read_metadata(tmp_path / "steps.parquet").metadata[b"toktrace"])
    assert {p["engine"] for p in meta["processes"]} == {"vllm"}
    assert all(p["anchor_unix_ns"] > 0 for p in meta["processes"])


def test_csv_export_matches_parquet_and_reads_in_duckdb(tmp_path: Path) -> None:
    import duckdb

    export(INTERFERENCE, "csv", tmp_path / "csv")
    export(INTERFERENCE, "parquet", tmp_path / "pq")
    for name in ("steps", "slices", "tokens", "requests", "interference"):
        csv = pl.read_csv(tmp_path / "csv" / f"{name}.csv")
        pq = pl.read_parquet(tmp_path / "pq" / f"{name}.parquet")
        assert csv.columns == pq.columns, name
        assert csv.height == pq.height, name
    # A token's candidates: one cell, ids separated by spaces, best first.
    csv_tokens = pl.read_csv(tmp_path / "csv" / "tokens.csv", schema_overrides={"top_ids": pl.String})
    pq_tokens = pl.read_parquet(tmp_path / "pq" / "tokens.parquet")
    as_lists = [[int(x) for x in (cell or "").split()] for cell in csv_tokens["top_ids"].to_list()]
    assert as_lists == pq_tokens["top_ids"].to_list()
    assert any(as_lists)
    con = duckdb.connect()
    got = con.execute(f"select count(*) from read_csv_auto('{tmp_path / 'csv' / 'steps.csv'}')").fetchone()
    assert got is not None and got[0] == 46


def test_interference_frame_names_the_culprit_and_sums_to_the_request_totals(tmp_path: Path) -> None:
    export(INTERFERENCE, "parquet", tmp_path)
    frame = pl.read_parquet(tmp_path / "interference.parquet")
    rows = {r["request_id"]: r for r in cli_json("requests", str(INTERFERENCE))}
    totals = frame.group_by("request_id").agg(pl.col("delay_ms").sum())
    for rec in totals.iter_rows(named=True):
        assert rec["delay_ms"] == pytest.approx(rows[rec["request_id"]]["interference_ms"], abs=0.05)
    stalled = frame.filter(pl.col("request_id").str.starts_with("decode-")).sort("delay_ms").tail(4)
    assert set(stalled["culprit_request_id"]) == {"long-prompt"}
    assert set(stalled["cause"]) <= {"co_scheduled_prefill", "queued", "preemption"}


def test_request_and_window_selection(tmp_path: Path) -> None:
    export(INTERFERENCE, "csv", tmp_path / "one", "--request", "decode-2")
    requests = pl.read_csv(tmp_path / "one" / "requests.csv")
    assert requests["request_id"].to_list() == ["decode-2"]
    tokens = pl.read_csv(tmp_path / "one" / "tokens.csv")
    assert set(tokens["request_id"]) == {"decode-2"}
    assert tokens.height == cli_json("requests", str(INTERFERENCE), "--limit", "100")[2]["output_tokens"]
    # Steps come along for the request's lifetime only.
    steps = pl.read_csv(tmp_path / "one" / "steps.csv")
    assert 0 < steps.height <= 46

    # A window of the first half second: fewer steps and tokens than the whole.
    export(INTERFERENCE, "csv", tmp_path / "all")
    export(INTERFERENCE, "csv", tmp_path / "early", "--from", "0", "--to", "500ms")
    all_steps = pl.read_csv(tmp_path / "all" / "steps.csv")
    early = pl.read_csv(tmp_path / "early" / "steps.csv")
    start = all_steps["start_unix_ns"].min()
    assert 0 < early.height < all_steps.height
    assert early["start_unix_ns"].min() <= start + 500_000_000
    early_tokens = pl.read_csv(tmp_path / "early" / "tokens.csv")
    assert (early_tokens["exit_unix_ns"] <= start + 500_000_000).all()


def test_export_refuses_bad_input(tmp_path: Path) -> None:
    unknown = run_cli("export", str(INTERFERENCE), "--format", "csv", "--out", str(tmp_path), "--request", "nope")
    assert unknown.returncode == 3 and "nope" in unknown.stderr
    bad_time = run_cli("export", str(INTERFERENCE), "--format", "csv", "--out", str(tmp_path), "--from", "soon")
    assert bad_time.returncode == 2 and "RFC 3339" in bad_time.stderr
    into_dir = run_cli("export", str(INTERFERENCE), "--format", "perfetto", "--out", str(tmp_path))
    assert into_dir.returncode == 1 and "is a directory" in into_dir.stderr
    missing = run_cli("export", str(tmp_path / "absent"), "--format", "csv", "--out", str(tmp_path / "x"))
    assert missing.returncode == 1


def test_exports_replace_a_planted_symlink_and_spare_another_users_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    report = tmp_path / "report.html"
    report.symlink_to(victim)
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "steps.csv").symlink_to(victim)
    assert run_cli("export", str(INTERFERENCE), "--format", "html", "--out", str(report)).returncode == 0
    assert run_cli("export", str(INTERFERENCE), "--format", "csv", "--out", str(tables)).returncode == 0
    assert victim.read_text() == "precious"
    assert not report.is_symlink() and "<html" in report.read_text()
    assert not (tables / "steps.csv").is_symlink() and pl.read_csv(tables / "steps.csv").height > 0
    other = second_user()
    if other is None:
        pytest.skip("needs root to make a second user (CI runs as root)")
    theirs = tmp_path / "theirs.pftrace"
    theirs.write_text("theirs")
    os.chown(theirs, other, -1)
    proc = run_cli("export", str(INTERFERENCE), "--format", "perfetto", "--out", str(theirs))
    assert proc.returncode == 1 and f"belongs to uid {other}" in proc.stderr, proc.stderr
    assert theirs.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "tables", "theirs.pftrace", "victim"]


def read_perfetto(path: Path) -> Any:
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    trace = pb.Trace()
    trace.ParseFromString(path.read_bytes())
    return pb, trace


def test_perfetto_export_decodes_with_the_official_protos(tmp_path: Path) -> None:
    out = tmp_path / "trace.pftrace"
    export(INTERFERENCE, "perfetto", out)
    pb, trace = read_perfetto(out)
    tracks: dict[int, Any] = {}
    events: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    for packet in trace.packet:
        if packet.HasField("track_descriptor"):
            tracks[packet.track_descriptor.uuid] = packet.track_descriptor
        if packet.HasField("track_event"):
            events[packet.track_event.track_uuid].append((packet.timestamp, packet.track_event))
    by_name: dict[str, list[Any]] = defaultdict(list)
    for t in tracks.values():
        by_name[t.name].append(t)
    # Every event sits on a described track.
    assert set(events) <= set(tracks)

    # One track per request, named by its id, holding one instant per token.
    rows = cli_json("requests", str(INTERFERENCE))
    for r in rows:
        (track,) = by_name[r["request_id"]]
        instants = [e for _, e in events[track.uuid] if e.type == pb.TrackEvent.TYPE_INSTANT and e.name.startswith("token ")]
        assert len(instants) == r["output_tokens"], r["request_id"]
        slices = [e.name for _, e in events[track.uuid] if e.type == pb.TrackEvent.TYPE_SLICE_BEGIN]
        assert "prefill" in slices

    # The engine's steps: one slice each, durations as the steps frame has them.
    steps = pl.read_parquet(_parquet(tmp_path, "steps"))
    step_tracks = [t.uuid for t in by_name["steps"] + by_name["steps (overlapped)"]]
    begins = sorted(ts for u in step_tracks for ts, e in events[u] if e.type == pb.TrackEvent.TYPE_SLICE_BEGIN)
    assert begins == sorted(steps["start_unix_ns"].to_list())
    ends = sorted(ts for u in step_tracks for ts, e in events[u] if e.type == pb.TrackEvent.TYPE_SLICE_END)
    assert ends == sorted(steps["end_unix_ns"].to_list())

    # Counters: batch size and prefill tokens per step, as counter tracks.
    for name, column in (("batch requests", "requests"), ("prefill tokens", "prefill_tokens"), ("decode tokens", "decode_tokens")):
        (track,) = by_name[name]
        assert track.HasField("counter")
        values = sorted((ts, e.counter_value) for ts, e in events[track.uuid])
        expected = sorted(zip(steps["start_unix_ns"].to_list(), steps[column].to_list()))
        assert values == expected, name

    # The slowest decode token names the long prompt as its culprit.
    worst = None
    for r in rows:
        if not r["request_id"].startswith("decode-"):
            continue
        (track,) = by_name[r["request_id"]]
        for _, e in events[track.uuid]:
            ann = {a.name: a for a in e.debug_annotations}
            # The first token's gap is its TTFT; stalls are between tokens.
            if "gap_ms" in ann and ann["index"].uint_value > 0 and (worst is None or ann["gap_ms"].double_value > worst["gap_ms"].double_value):
                worst = ann
    assert worst is not None
    assert worst["culprit"].string_value == "long-prompt"
    assert worst["gap_ms"].double_value == pytest.approx(max(r["max_itl_ms"] for r in rows if r["request_id"].startswith("decode-")), abs=0.05)


def test_perfetto_export_of_one_request(tmp_path: Path) -> None:
    out = tmp_path / "one.pftrace"
    export(INTERFERENCE, "perfetto", out, "--request", "long-prompt")
    pb, trace = read_perfetto(out)
    names = {p.track_descriptor.name for p in trace.packet if p.HasField("track_descriptor")}
    assert "long-prompt" in names
    assert not any(n.startswith("decode-") for n in names)


def _parquet(tmp_path: Path, name: str) -> Path:
    out = tmp_path / "pq"
    if not (out / f"{name}.parquet").exists():
        export(INTERFERENCE, "parquet", out)
    return out / f"{name}.parquet"


def chromium() -> str:
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    return found


def headless(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args],
        capture_output=True, text=True, timeout=180,
    )


def test_html_report_renders_in_chromium_with_the_key_numbers(tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    export(INTERFERENCE, "html", page)
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "https://" not in html

    shot = tmp_path / "report.png"
    proc = headless(f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri())
    assert shot.exists(), proc.stderr
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, "the screenshot is blank"
    # The chart colours are on screen: batch line (blue) and TTFT bars.
    pixels = set(c for _, c in colours)
    assert (0x2F, 0x6F, 0xDF) in pixels

    dom = headless("--dump-dom", page.as_uri()).stdout
    summary = cli_json("summary", str(INTERFERENCE))
    def shown(key: str) -> str:
        marker = f'data-key="{key}">'
        at = dom.index(marker) + len(marker)
        return dom[at:dom.index("<", at)]
    assert int(shown("requests")) == summary["requests"]
    assert int(shown("tokens")) == summary["tokens"]
    assert int(shown("steps")) == summary["steps"]
    assert float(shown("ttft_ms.p50")) == pytest.approx(summary["ttft_ms"]["p50"], abs=0.05)
    assert float(shown("ttft_ms.p99")) == pytest.approx(summary["ttft_ms"]["p99"], abs=0.05)
    assert float(shown("max_itl_ms.max")) == pytest.approx(summary["max_itl_ms"]["max"], abs=0.05)
    assert float(shown("total_interference_ms")) == pytest.approx(summary["total_interference_ms"], abs=0.1)
    # The slowest requests name their culprit; the offender ranking leads with it.
    slowest = dom[dom.index('id="slowest"'):]
    assert "long-prompt" in slowest[: slowest.index("</table>")]
    offenders = dom[dom.index('id="offenders"'):]
    first_row = offenders[offenders.index("<td>") + 4:]
    assert first_row.startswith("long-prompt")
    # The accuracy flag of the long prompt (a special token in its answer).
    flags = dom[dom.index('id="flags"'):]
    assert "special_token_in_output" in flags[: flags.index("</table>")]


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    proc = subprocess.run(
        f"'{toktrace_cli()}' tokens '{INTERFERENCE}' --request decode-0 --json | head -c 10",
        shell=True, capture_output=True, text=True, timeout=120,
    )
    assert "panicked" not in proc.stderr
    assert len(proc.stdout) == 10
