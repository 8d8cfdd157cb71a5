#!/usr/bin/env python3
"""The fleet dataset at scale (Tier 2, `scripts/extended.sh fleet-scale`).

Builds a dataset of ~100 M tokens from many captures — synthetic engines
recorded through the real probe (`toktrace-workload`), each on its own host
name (a UTS namespace per capture, so the dataset has many `host=`
partitions) — one capture at a time: record, `export --dataset`, delete the
trace, so the disk holds the dataset and one trace. Then measures:

- bytes per token on disk, per table and in all;
- export time per capture (the whole trace, first export) and, for one
  trace exported as it grows (its segments arriving a few at a time), each
  periodic export's time and how many segments it read;
- each named question's time in `toktrace fleet` (polars, embedded) and in
  DuckDB over the same files (`toktrace.fleet.duckdb_views`), median of
  three runs, and that both give the same number of rows.

Prints one JSON object (the result file's data) on stdout; progress on stderr.

Usage: python benches/fleet_scale.py --out DIR [--captures 50] [--tokens-per-capture 2000000]
Run with a Python that has `toktrace` and `duckdb` (the test venv).
Needs the release binaries: cargo build --release -p toktrace-viewer -p toktrace-workload
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("TOKTRACE_CACHE", Path.home() / ".cache" / "toktrace"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / "release"
TOKTRACE = str(TARGET / "toktrace")
WORKLOAD = str(TARGET / "toktrace-workload")
TABLES = ("steps", "slices", "tokens", "requests", "interference")


def log(msg: str) -> None:
    print(f"fleet-scale: {msg}", file=sys.stderr, flush=True)


def record(trace: Path, host: str, seed: int, tokens: int, segment_mib: int = 64) -> None:
    """A synthetic engine with its frontend, recorded under host name `host`."""
    cmd = [WORKLOAD, "--dir", str(trace), "--tokens", str(tokens), "--seed", str(seed), "--frontend",
           "--segment-mib", str(segment_mib)]
    inner = f"hostname {host} && exec " + " ".join(cmd)
    subprocess.run(["unshare", "--uts", "sh", "-c", inner], check=True, stdout=subprocess.DEVNULL)


def export(trace: Path, root: Path) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run([TOKTRACE, "export", str(trace), "--format", "parquet", "--dataset", str(root)],
                          capture_output=True, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"export failed: {proc.stderr}")
    return took, proc.stderr


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(fn: Any, runs: int = 3) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.monotonic()
        out = fn()
        times.append(time.monotonic() - t0)
    return statistics.median(times), out


def questions() -> list[tuple[str, list[str], dict[str, Any]]]:
    """(label, `toktrace fleet` flags, toktrace.fleet.query arguments)."""
    out = [("worst_itl", ["--worst-itl"], {"name": "worst_itl"}),
           ("offenders", ["--offenders"], {"name": "offenders"})]
    for by in ("model", "host", "day"):
        out.append((f"stalls by {by}", ["--stalls", "--by", by], {"name": "stalls", "by": by}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="working directory (the dataset goes here)")
    ap.add_argument("--captures", type=int, default=50)
    ap.add_argument("--tokens-per-capture", type=int, default=2_000_000)
    ap.add_argument("--hosts", type=int, default=10)
    args = ap.parse_args()

    import duckdb  # noqa: PLC0415 (only this benchmark needs it)
    import toktrace.fleet as fleet  # noqa: PLC0415

    work = args.out
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = work / "fleet"
    trace = work / "trace"
    exports: list[float] = []
    tokens = 0
    t_all = time.monotonic()
    for c in range(args.captures):
        host = f"replica-{c % args.hosts:02d}"
        record(trace, host, seed=c + 1, tokens=args.tokens_per_capture)
        took, _ = export(trace, root)
        exports.append(took)
        tokens += args.tokens_per_capture
        shutil.rmtree(trace)
        log(f"capture {c + 1}/{args.captures} ({host}): exported in {took:.1f} s; {tokens:,} tokens so far")
    build_s = time.monotonic() - t_all

    # One more trace, exported periodically as it grows: its segments arrive
    # a few at a time, as a timer would find them.
    record(trace, "replica-growing", seed=10_000, tokens=args.tokens_per_capture, segment_mib=8)
    engine_dir = max((p for p in trace.iterdir() if p.is_dir()), key=du)
    segments = sorted(engine_dir.glob("seg-*.tts"))
    growing = work / "growing"
    for p in trace.iterdir():
        (growing / p.name).mkdir(parents=True)
    frontend_segments = {p.name: sorted(p.glob("seg-*.tts")) for p in trace.iterdir() if p != engine_dir}
    periodic = []
    steps = max(1, len(segments) // 6)
    for upto in list(range(steps, len(segments), steps)) + [len(segments)]:
        # The frontend's segments keep pace with the engine's.
        wanted = [(engine_dir.name, seg) for seg in segments[:upto]]
        for name, segs in frontend_segments.items():
            wanted += [(name, seg) for seg in segs[:max(1, -(-upto * len(segs) // len(segments)))]]
        for name, seg in wanted:
            if not (growing / name / seg.name).exists():
                shutil.copy(seg, growing / name / seg.name)
        took, said = export(growing, root)
        read = next((line for line in said.splitlines() if "reading" in line), "")
        periodic.append({"segments_present": upto, "seconds": round(took, 2),
                         "read": read.split("reading ", 1)[-1].split(" (", 1)[0] if read else "all"})
        log(f"periodic export with {upto} of {len(segments)} segments: {took:.1f} s ({periodic[-1]['read']})")
    whole_s, _ = export(trace, work / "whole-once")
    tokens += args.tokens_per_capture
    shutil.rmtree(trace)
    shutil.rmtree(growing)
    shutil.rmtree(work / "whole-once")

    sizes = {t: du(root / t) for t in TABLES if (root / t).exists()}
    total_bytes = du(root)
    con = duckdb.connect()
    fleet.duckdb_views(con, root)
    times = {}
    for label, flags, q in questions():
        polars_s, rows = timed(lambda: json.loads(subprocess.run(
            [TOKTRACE, "fleet", str(root), *flags, "--json"], check=True, capture_output=True, text=True).stdout))
        sql = fleet.query(q["name"], by=q.get("by", "model"))
        duck_s, duck_rows = timed(lambda: con.execute(sql).fetchall())
        if len(rows) != len(duck_rows):
            raise SystemExit(f"{label}: polars gave {len(rows)} rows, DuckDB {len(duck_rows)}")
        times[label] = {"polars_s": round(polars_s, 3), "duckdb_s": round(duck_s, 3), "rows": len(rows)}
        log(f"{label}: polars {polars_s:.2f} s, DuckDB {duck_s:.2f} s, {len(rows)} rows")
    token_rows = con.execute("SELECT count(*) FROM tokens").fetchall()[0][0]

    print(json.dumps({
        "captures": args.captures + 1,
        "hosts": args.hosts + 1,
        "tokens_recorded": tokens,
        "token_rows": token_rows,
        "dataset_bytes": total_bytes,
        "bytes_per_token": round(total_bytes / max(token_rows, 1), 2),
        "table_bytes": sizes,
        "export_s_median": round(statistics.median(exports), 2),
        "export_s_max": round(max(exports), 2),
        "build_s": round(build_s, 1),
        "periodic_exports": periodic,
        "whole_export_s": round(whole_s, 2),
        "queries": times,
        "cores": os.cpu_count(),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
