"""A Python process driving the probe as an engine would (a step per
iteration, arrivals and finishes, segments rotating) is SIGKILLed at random
moments, many times over: every trace reads, `summary` works, a torn tail is
reported, no token is duplicated or out of order, and what is lost is the
tail the drain had not yet handed to write(2) — measured here, in steps."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from conftest import dump, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trace_tokens import step_tokens  # noqa: E402

KILLS = int(os.environ.get("TOKTRACE_PROBE_KILLS", "25"))

# The engine stand-in: 8 requests decoding, one token each per step; every
# 50 steps one finishes and another arrives. It prints each step id once the
# record call returned (with its start time), so the parent knows what was
# handed to the probe, and when.
DRIVER = r"""
import sys
from toktrace._native import NativeProbe, monotonic_ns

probe = NativeProbe(sys.argv[1], segment_bytes=64 * 1024, flush_ms=50)
live = [f"r{i}" for i in range(8)]
nxt = 8
out = [0] * 8
for step in range(10**9):
    if step % 50 == 49:
        probe.record_finishes([(live[0], "stop", out[0])])
        live = live[1:] + [f"r{nxt}"]
        out = out[1:] + [0]
        nxt += 1
    firsts = list(out)
    t = monotonic_ns()
    probe.record_step(step, t, live, [0] * 8, [1] * 8, live, firsts,
                      token_ids=[(step * 7 + i) % 1000 for i in range(8)])
    out = [o + 1 for o in out]
    print(step, t, flush=True)
"""


def kill_once(trace_dir: Path, rng: random.Random) -> dict[int, int]:
    """Run the driver, SIGKILL it; returns step id -> start time of every
    step it handed to the probe."""
    child = subprocess.Popen([sys.executable, "-c", DRIVER, str(trace_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    # Wait for a random number of steps (so kills land after 0 to several
    # segment rotations), then kill without warning.
    target = rng.randint(1, 4000)
    handed: dict[int, int] = {}
    for line in child.stdout:
        step, t = map(int, line.split())
        handed[step] = t
        if step >= target:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    for line in child.stdout.read().splitlines():
        fields = line.split()
        if len(fields) == 2:  # the last line may be cut by the kill
            handed[int(fields[0])] = int(fields[1])
    return handed


def test_a_probe_driver_killed_many_times_leaves_readable_traces(tmp_path: Path) -> None:
    rng = random.Random(20261207)
    lost_steps: list[int] = []
    lost_ms: list[float] = []
    torn = 0
    for n in range(KILLS):
        trace_dir = tmp_path / f"kill-{n}"
        handed = kill_once(trace_dir, rng)
        if not any(trace_dir.rglob("seg-*.tts")):
            # Killed before the drain's first write (the directory may already
            # exist, its first segment not yet): nothing to read, all lost.
            lost_steps.append(len(handed))
            lost_ms.append((max(handed.values()) - min(handed.values())) / 1e6 if handed else 0.0)
            continue
        records = dump(trace_dir)  # asserts the reader succeeds
        steps = [r["record"]["Step"] for r in records if "Step" in r["record"]]
        ids = [s["step_id"] for s in steps]
        # A prefix of what was handed over, in order, nothing twice.
        assert ids == list(range(len(ids))), f"kill {n}: steps {ids[:5]}…{ids[-5:]}"
        last_handed = max(handed)
        # The step being recorded when the kill came may be in the trace
        # without the parent having heard of it: one more, never two.
        assert len(ids) - 1 <= last_handed + 1
        seen: dict[int, int] = {}
        for s in steps:
            for req, tok in step_tokens(s):
                assert tok["index"] == seen.get(req, 0), f"kill {n}: token out of order"
                seen[req] = tok["index"] + 1
        summary = run_cli("summary", str(trace_dir))
        assert summary.returncode == 0, summary.stderr
        torn += "torn" in summary.stderr or "truncated" in summary.stderr
        lost_steps.append(max(0, last_handed - (len(ids) - 1)))
        # How long before the kill the lost tail began: the oldest lost step's
        # age when the last one was handed over.
        first_lost = len(ids)
        lost_ms.append((handed[last_handed] - handed[first_lost]) / 1e6 if first_lost in handed else 0.0)
    lost_steps.sort()
    lost_ms.sort()
    figures = {"kills": KILLS, "flush_ms": 50, "lost_steps_median": lost_steps[len(lost_steps) // 2],
               "lost_steps_max": lost_steps[-1], "lost_ms_median": round(lost_ms[len(lost_ms) // 2], 1),
               "lost_ms_max": round(lost_ms[-1], 1), "torn_tails_reported": torn}
    print(json.dumps(figures))
    if os.environ.get("TOKTRACE_FIGURES"):
        with open(os.environ["TOKTRACE_FIGURES"], "a") as f:
            f.write(json.dumps({"test": "probe_kill", **figures}) + "\n")
