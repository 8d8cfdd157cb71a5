#!/usr/bin/env python3
"""Opening one request of a multi-GB trace, with and without the index (not in CI).

Generates a synthetic continuous-batching trace through the real probe
(``toktrace-workload``, cached under the cache dir), then, side by side in one
run:

- ``toktrace index DIR``: the one full pass that builds the index (wall time,
  peak RSS, index size);
- ``toktrace view DIR --request ID`` in a pseudo-terminal, timed from start
  until the request's token screen is drawn, for requests spread over the
  trace — through the index, and with ``--no-index`` (the baseline: the whole
  trace is read and analysed first);
- ``toktrace tokens DIR --request ID --json`` the same two ways.

Usage: python3 benches/view_open.py [--tokens 50e6] [--requests 5] [--baseline 1]
Needs the release binaries: cargo build --release -p toktrace-viewer -p toktrace-workload
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

CACHE = Path(os.environ.get("TOKTRACE_CACHE", Path.home() / ".cache" / "toktrace"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / "release"
TOKTRACE = TARGET / "toktrace"
INDEX = ".toktrace-index"
ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def trace_for(tokens: int, seed: int) -> Path:
    out = CACHE / "scale" / f"view-{tokens}-s{seed}"
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run(
        [str(TARGET / "toktrace-workload"), "--dir", str(out), "--tokens", str(tokens),
         "--seed", str(seed), "--frontend"],
        check=True,
    )
    print(f"  generated {tokens:,} tokens in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    (out / ".complete").touch()
    return out


def trace_bytes(trace: Path) -> int:
    return sum(p.stat().st_size for p in trace.rglob("seg-*.tts"))


def timed(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes of this child alone, stdout."""
    t0 = time.monotonic()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, args)
    return wall, usage.ru_maxrss * 1024, out


def view_open_s(trace: Path, request: str, *extra: str, timeout: float = 600.0) -> float:
    """Seconds from exec until the viewer has drawn the request's token screen."""
    t0 = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-256color"
        os.execv(str(TOKTRACE), [str(TOKTRACE), "view", str(trace), "--request", request, *extra])
    # A terminal of 120×40: without a size the viewer has nowhere to draw.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    seen = b""
    # The token screen's title, once escape sequences are taken out.
    marker = f"tokens of {request}"
    opened = None
    try:
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if marker in re.sub(r" +", " ", ESCAPE.sub(b" ", seen).decode(errors="replace")):
                opened = time.monotonic() - t0
                break
    finally:
        try:
            os.write(fd, b"q")
            time.sleep(0.2)
        except OSError:
            pass
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    if opened is None:
        tail = seen[-400:].decode(errors="replace")
        raise RuntimeError(f"the viewer did not show {request} within {timeout} s: …{tail}")
    return opened


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="50e6", help="trace size in generated tokens")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--requests", type=int, default=5, help="requests opened, spread over the trace")
    ap.add_argument("--baseline", type=int, default=1, help="of those, how many also without the index")
    args = ap.parse_args()
    tokens = int(float(args.tokens))
    trace = trace_for(tokens, args.seed)
    size = trace_bytes(trace)
    print(f"trace: {tokens:,} tokens, {size / 1e9:.2f} GB in {len(list(trace.rglob('seg-*.tts')))} segments")

    (trace / INDEX).unlink(missing_ok=True)
    wall, rss, out = timed([str(TOKTRACE), "index", str(trace)])
    m = re.search(r"\((\d+) requests", out)
    if not m:
        raise RuntimeError(f"unexpected `toktrace index` output: {out}")
    n = int(m.group(1))
    print(f"index build: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB, "
          f"index {(trace / INDEX).stat().st_size / 1e6:.1f} MB, {n:,} requests")

    # Client ids of the synthetic frontend are req-N in arrival order.
    picks = [f"req-{int(n * (i + 0.5) / args.requests)}" for i in range(args.requests)]
    print(f"\n{'request':<14} {'view (index)':>13} {'tokens (index)':>15} {'view (no index)':>16} {'tokens (no index)':>18}")
    for i, req in enumerate(picks):
        v = view_open_s(trace, req)
        t, _, _ = timed([str(TOKTRACE), "tokens", str(trace), "--request", req, "--json"])
        row = f"{req:<14} {v:>12.2f}s {t:>14.2f}s"
        if i < args.baseline:
            vb = view_open_s(trace, req, "--no-index")
            # `tokens` never builds an index: hide it for the baseline.
            hidden = trace / (INDEX + ".off")
            (trace / INDEX).rename(hidden)
            try:
                tb, _, _ = timed([str(TOKTRACE), "tokens", str(trace), "--request", req, "--json"])
            finally:
                hidden.rename(trace / INDEX)
            row += f" {vb:>15.2f}s {tb:>17.2f}s"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
