"""A real `vllm serve` under load, killed, and out of disk: every token a
client received is in the trace with the same id and logprob, or is counted
by the trace's drop records; the server keeps serving; every trace reads.

Tier 1 runs each for about a minute of load (TOKTRACE_SOAK_SECONDS, default
60). Tier 2 (scripts/extended.sh faults-vllm) runs them for many minutes and
more kills, and writes the figures each test reports (TOKTRACE_FIGURES: a
JSON-lines file the tests append to) into a dated result file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from served import (Completion, Server, check_accounting, check_accounting_of_finished,  # noqa: E402
                    check_soak, engine_id, engine_side, load, report, run_cli, run_soak)

KILLS = int(os.environ.get("TOKTRACE_KILLS", "1"))


# ===== soak: many streaming clients, a small ring, rotating segments =====


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    return run_soak(tmp_path_factory.mktemp("soak"), "vllm")


def test_under_load_every_received_token_is_traced_or_counted(soak):
    check_soak(soak)


# ===== SIGKILL of the real server's processes, mid-stream =====

KILL_ORDER = ("engine", "api", "both")
# Default ring and drain interval (what a user runs), small segments so that
# kills land after several rotations.
ROTATING = {"TOKTRACE_SEGMENT_BYTES": "256K"}


@dataclass
class Kill:
    which: str
    streams: list[Completion]
    engine_exited_by_itself: bool | None  # after the API server alone was killed


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """The server killed mid-stream KILLS times (engine core, API server,
    both, in turn), restarted after each, every run traced into the same
    directory; then a clean run to the end."""
    tmp = tmp_path_factory.mktemp("kill")
    server = Server(tmp, tmp / "trace", env=ROTATING)
    kills: list[Kill] = []
    try:
        for n in range(KILLS):
            server.start()
            stop = threading.Event()
            streams: list[Completion] = []
            worker = threading.Thread(target=lambda: streams.extend(load(server.port, 3600, 6, seed=n, stop=stop)))
            worker.start()
            time.sleep(10 + 5 * (n % 3))  # mid-stream, after several segment rotations
            which = KILL_ORDER[n % len(KILL_ORDER)]
            engines = server.engine_pids()
            server.kill(which, reap=which != "api")
            by_itself = None
            if which == "api":
                by_itself = server.wait_gone(engines, 30)
                server.kill("group")
            stop.set()
            worker.join()
            kills.append(Kill(which, streams, by_itself))
        server.start()
        clean = load(server.port, 10, 4, seed=99)
    finally:
        server.stop()
    return server, kills, clean


def test_after_each_kill_the_trace_reads_and_nothing_is_duplicated(killed):
    server, kills, clean = killed
    side = engine_side(server.trace_dir)
    # One engine-core process per start; each killed one may end in a torn frame.
    assert side.processes == len(kills) + 1, side.processes
    for w in side.warnings:
        assert "torn" in w or "truncated" in w or "incomplete" in w, w
    for proc in (run_cli("summary", str(server.trace_dir)), run_cli("requests", str(server.trace_dir), "--json")):
        assert proc.returncode == 0, proc.stderr
    assert all(c.error is None for c in clean), [c.error for c in clean][:3]
    check_accounting_of_finished(side, clean)
    lost = []
    for k in kills:
        # Streams with logprobs say which token ids reached the client, cut
        # short by the kill or not: each traced token is one of them, none
        # twice, and what the trace lacks is what the killed process had not
        # yet handed to write(2).
        missing = received = 0
        for c in k.streams:
            if not c.asked_logprobs or not c.id:
                continue
            iid = engine_id(side, c.id)
            toks = side.tokens.get(iid, []) if iid else []
            idx = [t["index"] for t in toks]
            assert idx == sorted(set(idx)), f"{iid}: duplicated or out of order"
            for t in toks:
                if t["index"] < len(c.token_ids):
                    assert t["token_id"] == c.token_ids[t["index"]], (iid, t["index"])
            got = {t["index"] for t in toks}
            received += len(c.token_ids)
            missing += sum(1 for i in range(len(c.token_ids)) if i not in got)
        lost.append({"which": k.which, "received": received, "missing": missing,
                     "engine_exited_by_itself": k.engine_exited_by_itself})
    report("kill", kills=lost, flush_ms=50, ring_slots=65536, torn_tails=len(side.warnings),
           processes=side.processes, segments=side.segments)


# ===== the disk fills while the server runs =====


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    tmp = tmp_path_factory.mktemp("full")
    mount = tmp / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        server = Server(tmp, mount / "trace", env={"TOKTRACE_SEGMENT_BYTES": "1M", "TOKTRACE_FLUSH_MS": "100"})
        server.start()
        try:
            before = load(server.port, 10, 6, seed=1)
            # Fill what is left of the disk.
            filler = mount / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 16))
                        f.flush()
                except OSError:
                    pass
            during = load(server.port, 20, 6, seed=2)
            filler.unlink()
            after = load(server.port, 10, 6, seed=3)
        finally:
            server.stop()
        log = server.log()
        side = engine_side(server.trace_dir)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    return before, during, after, log, side


def test_a_full_disk_never_stops_the_server_and_losses_are_exact(disk_full):
    before, during, after, log, side = disk_full
    for phase in (before, during, after):
        assert phase and all(c.error is None for c in phase), [c.error for c in phase if c.error][:3]
    assert side.write_failed > 0, "the disk never refused a write"
    figures = check_accounting(side, before + during + after)
    assert figures["traced"] > 0
    # One warning per failure episode and process, and one "writing again".
    failures = [l for l in log.splitlines() if "toktrace: cannot write trace" in l]
    assert 1 <= len(failures) <= 2, failures
    assert any("writing to" in l and "again" in l for l in log.splitlines()), log[-3000:]
    report("disk_full", tmpfs_mb=16, requests=len(before + during + after), write_failed=side.write_failed,
           **figures)
