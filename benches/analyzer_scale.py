#!/usr/bin/env python3
"""Analyzer time and peak memory against trace size (not in CI).

Generates synthetic continuous-batching traces of 1 M, 10 M and 100 M tokens
through the real probe (``toktrace-workload``, cached under the cache dir by
size and seed), then times ``toktrace summary --json`` on each, reporting wall
time, CPU time and peak resident memory of the analyzer process.

Usage: python3 benches/analyzer_scale.py [--sizes 1e6,1e7,1e8] [--runs 1]
Needs the release binaries: cargo build --release -p toktrace-viewer -p toktrace-workload
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("TOKTRACE_CACHE", Path.home() / ".cache" / "toktrace"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / "release"


def trace_for(tokens: int, seed: int) -> Path:
    out = CACHE / "scale" / f"wl-{tokens}-s{seed}"
    done = out / ".complete"
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run(
        [str(TARGET / "toktrace-workload"), "--dir", str(out), "--tokens", str(tokens), "--seed", str(seed)],
        check=True,
    )
    print(f"  generated {tokens:,} tokens in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    done.touch()
    return out


def measure(trace: Path) -> tuple[float, float, int]:
    """Wall s, CPU s, peak RSS bytes of one `toktrace summary --json` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(os.devnull, "wb") as sink:
        subprocess.run([str(TARGET / "toktrace"), "summary", str(trace), "--json"], check=True, stdout=sink)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children is the largest child so far: run the biggest last.
    return wall, cpu, after.ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e6,1e7,1e8")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    print(f"{'tokens':>12} {'trace MB':>9} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'M tokens/s':>11}")
    for n in sizes:
        trace = trace_for(n, args.seed)
        size = sum(f.stat().st_size for f in trace.rglob("seg-*.tts"))
        best = None
        for _ in range(args.runs):
            m = measure(trace)
            best = m if best is None or m[0] < best[0] else best
        wall, cpu, rss = best
        print(f"{n:>12,} {size / 1e6:>9.0f} {wall:>8.2f} {cpu:>8.2f} {rss / 1e6:>12.0f} {n / wall / 1e6:>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
