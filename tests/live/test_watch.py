"""`toktrace watch` beside a trace being written, scraped by a real Prometheus
server (Debian's `prometheus` package) and sending spans to a real OTLP
receiver (the official `opentelemetry-proto` messages over HTTP).

The trace is written in real time by `toktrace-workload --pace 1` through the
real probe (a synthetic engine: the live view's own logic is what is tested
here; on real engines it reads the same files). A small ring makes the probe
drop records, so the loss counters are compared with something in them.

What must hold, once the writer has finished:
- steps, tokens, dropped records and tokens, and the number of TTFTs that
  Prometheus scraped from `watch` equal `toktrace summary` / `toktrace
  requests` of the finished trace exactly;
- stalls, judged live on what was known at the time, are within 10 % (or 5)
  of the offline count, and every stall line printed is counted;
- every finished request's span reached the collector, the first of them
  while the trace was still being written.

Waiting on the servers is bounded only to fail instead of hanging; no
timing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]


def binary(env: str, name: str) -> str:
    """A toktrace binary: from the environment variable, else the cargo target."""
    given = os.environ.get(env)
    if given:
        return given
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "release" / name
    assert path.exists(), f"{name} not built: cargo build --release -p ... or set {env}"
    return str(path)


TOKTRACE = binary("TOKTRACE_PREBUILT_CLI", "toktrace")
WORKLOAD = binary("TOKTRACE_WORKLOAD", "toktrace-workload")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], limit_s: float = 180) -> Any:
    """Poll until `check` returns something truthy; fail after `limit_s` (a
    bound against hanging, not a performance figure)."""
    end = time.monotonic() + limit_s
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, ValueError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}: last saw {last!r}")


def toktrace_json(*args: str) -> Any:
    proc = subprocess.run([TOKTRACE, *args, "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_trace(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A synthetic engine and its frontend, written in real time (its clock
    is this machine's, so a stall line's lag is measured)."""
    return subprocess.run(
        [
            WORKLOAD, "--dir", str(root), "--pace", "1", "--tokens", "10000", "--frontend",
            "--rate", "8", "--output-median", "80", *extra,
        ],
        capture_output=True, text=True, timeout=600,
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real Prometheus scraping `watch` at a port chosen here, every second."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed (scripts/lib.sh ensure_prometheus installs Debian's)")
    watch_port, api_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        "scrape_configs:\n  - job_name: toktrace\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{watch_port}']\n"
    )
    proc = subprocess.Popen(
        [
            exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{api_port}",
        ],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
    )
    try:
        api = f"http://127.0.0.1:{api_port}"
        wait_for("Prometheus to start", lambda: urllib.request.urlopen(f"{api}/-/ready", timeout=2).status == 200)
        yield api, watch_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(api: str, promql: str) -> dict[str, float]:
    """An instant query: value by the `process` label."""
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return {s["metric"].get("process", ""): float(s["value"][1]) for s in body["data"]["result"]}


def start_watch(root: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [TOKTRACE, "watch", str(root), "--json", "--poll-ms", "100", *args],
        stdout=open(out, "w"), stderr=open(out.with_suffix(".err"), "w"),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_prometheus_scrapes_what_summary_says(tmp_path: Path, prometheus: tuple[str, int]) -> None:
    api, watch_port = prometheus
    root = tmp_path / "trace"
    root.mkdir()
    stalls_out = tmp_path / "stalls.jsonl"
    watch = start_watch(root, stalls_out, "--prometheus", f"127.0.0.1:{watch_port}")
    try:
        wait_for("Prometheus to see watch", lambda: query(api, 'up{job="toktrace"}').get("") == 1.0)
        # A ring small enough to drop records at this pace.
        written = write_trace(root, "--ring-slots", "16")
        assert written.returncode == 0, written.stderr
        summary = toktrace_json("summary", str(root))
        engine = next(p for p in summary["processes"] if p["role"] == "engine-core")
        name = engine["name"]
        assert engine["dropped_records"] > 0, "the small ring was meant to drop records"
        requests = toktrace_json("requests", str(root), "--include-warmup")
        ttfts = sum(1 for r in requests if r["ttft_ms"] is not None)

        def scraped() -> dict[str, float] | None:
            got = {
                "steps": query(api, "toktrace_steps_total").get(name),
                "tokens": query(api, "toktrace_tokens_total").get(name),
                "dropped_records": query(api, "toktrace_dropped_records_total").get(name),
                "dropped_tokens": query(api, "toktrace_dropped_tokens_total").get(name),
                "ttfts": query(api, "toktrace_ttft_seconds_count").get(name),
                "stalls": query(api, "toktrace_stalls_total").get(name),
            }
            # Scrapes lag the trace: wait for the last one after the writer ended.
            done = got["steps"] == engine["steps"] and got["ttfts"] == ttfts
            return got if done else None

        got = wait_for("Prometheus to scrape the finished trace", scraped)
    finally:
        stop(watch)
    assert got["steps"] == engine["steps"]
    assert got["tokens"] == engine["tokens"]
    assert got["dropped_records"] == engine["dropped_records"]
    assert got["dropped_tokens"] == engine["dropped_tokens"]
    assert got["ttfts"] == ttfts
    offline_stalls = summary["stalls"]
    assert abs(got["stalls"] - offline_stalls) <= max(0.1 * offline_stalls, 5), (got["stalls"], offline_stalls)
    printed = [json.loads(line) for line in stalls_out.read_text().splitlines()]
    assert len(printed) >= got["stalls"] > 0
    assert all(s["process"] == name for s in printed)
    assert any(s["culprits"] for s in printed)
    # The histograms Prometheus holds are whole: buckets sum to the count.
    assert query(api, 'toktrace_itl_seconds_bucket{le="+Inf"}')[name] == query(api, "toktrace_itl_seconds_count")[name]
    lags = sorted(s["lag_ms"] for s in printed)
    print(f"\nstalls: {got['stalls']:.0f} live, {offline_stalls} offline; "
          f"lag from the step's end to the line: median {lags[len(lags) // 2]:.0f} ms, max {lags[-1]:.0f} ms",
          file=sys.stderr)


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[tuple[float, Any]]]]:
    """An OTLP/HTTP receiver: each request's spans with the time they came."""
    pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    received: list[tuple[float, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = pb.ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.append((time.monotonic(), request))
            reply = pb.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def span_names(received: list[tuple[float, Any]]) -> list[str]:
    out = []
    for _, req in received:
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {a.key: a.value.string_value for a in span.attributes}
                    out.append(attrs.get("gen_ai.response.id", ""))
    return out


def test_finished_requests_are_sent_as_spans_as_they_finish(
    tmp_path: Path, otlp_receiver: tuple[str, list[tuple[float, Any]]]
) -> None:
    url, received = otlp_receiver
    root = tmp_path / "trace"
    root.mkdir()
    watch = start_watch(root, tmp_path / "stalls.jsonl", "--otlp", url, "--protocol", "http", "--exit-when-idle", "3")
    written = write_trace(root)
    ended = time.monotonic()
    assert written.returncode == 0, written.stderr
    assert watch.wait(timeout=300) == 0, (tmp_path / "stalls.err").read_text()
    finished = {r["request_id"] for r in toktrace_json("requests", str(root)) if r["finish_reason"]}
    sent = span_names(received)
    assert len(sent) == len(set(sent)), "a span was sent twice"
    assert set(sent) == finished
    # As they finish: the first spans came while the trace was being written.
    assert received and received[0][0] < ended


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    missing = subprocess.run([TOKTRACE, "watch", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "no such file or directory" in missing.stderr
    bad = subprocess.run([TOKTRACE, "watch", str(tmp_path), "--poll-ms", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [TOKTRACE, "watch", str(tmp_path), "--once", "--prometheus", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )
    assert busy.returncode == 1
    assert "cannot serve metrics" in busy.stderr
    # An empty directory read once is no error: the engine may not have started.
    empty = subprocess.run([TOKTRACE, "watch", str(tmp_path), "--once"], capture_output=True, text=True, timeout=60)
    assert empty.returncode == 0, empty.stderr
