"""Python-level cost of recording one engine step, side by side in one run.

For batch sizes 1, 64 and 256 (one sampled token per request, top-5
logprobs) and for the shapes engines really hand over:

- ``numpy``: vLLM's LogprobsLists — [n, k+1] arrays, sliced views for top-K;
- ``nested``: vLLM's ``sampled_token_ids`` (list of lists) with list logprobs;
- ``lists``: SGLang's flat Python lists;

it times (calling thread's CPU time), per step and per token:

- ``noop``: a no-op PyO3 call taking the same arguments (the floor);
- ``toktrace``: ``NativeProbe.record_step`` (builds the record, pushes it into the ring);
- ``otel``: the OpenTelemetry Python SDK recording the same data as one span
  per step with the token columns as attributes (batch span processor,
  exporter that discards).

Also measured: the ``toktrace.pth`` start-up line when tracing is off.

Usage: python benches/python_probe.py [--quick]
Needs: the toktrace wheel, numpy, opentelemetry-sdk (tests/requirements.txt).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import timeit

import numpy as np

from toktrace._native import NativeProbe, monotonic_ns, noop

K = 5


def columns(batch: int, shape: str) -> dict:
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, 150_000, size=(batch, K + 1), dtype=np.int64)
    lps = -np.sort(rng.random((batch, K + 1), dtype=np.float32), axis=1) * 10
    ranks = rng.integers(1, 4, size=batch, dtype=np.int64)
    if shape == "numpy":
        return dict(token_ids=ids[:, 0], logprobs=lps[:, 0], ranks=ranks, top_ids=ids[:, 1:], top_logprobs=lps[:, 1:])
    if shape == "nested":
        return dict(token_ids=[[int(x)] for x in ids[:, 0]], logprobs=lps[:, 0].tolist(), ranks=ranks.tolist(),
                    top_ids=ids[:, 1:].tolist(), top_logprobs=lps[:, 1:].tolist())
    return dict(token_ids=ids[:, 0].tolist(), logprobs=lps[:, 0].tolist(), ranks=ranks.tolist(),
                top_ids=ids[:, 1:].ravel().tolist(), top_logprobs=lps[:, 1:].ravel().tolist())


def per_call(fn, number: int, repeat: int) -> float:
    """Median CPU seconds of the calling thread per call, over `repeat` runs of
    `number` calls. Thread CPU time, not wall time: on a 2-core machine the
    probe's drain thread and the SDK's export thread compete for cores with the
    calling thread, and what an engine pays is the CPU its own thread spends."""
    times = timeit.repeat(fn, number=number, repeat=repeat, timer=time.thread_time)
    return statistics.median(times) / number


def make_otel():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=65536))
    return provider, provider.get_tracer("toktrace-bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = ap.parse_args()
    repeat = 3 if args.quick else 7
    root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = tempfile.mkdtemp(prefix="toktrace-bench-", dir=root)
    probe = NativeProbe(tmp, ring_slots=1024, ring_bytes=64 << 20)
    provider, tracer = make_otel()

    print(f"{'batch':>5} {'shape':>7} | {'noop ns/step':>12} | {'toktrace ns/step':>16} {'ns/token':>9} "
          f"{'over noop ns/tok':>16} | {'otel ns/step':>12} {'ns/token':>9} {'otel/toktrace':>13}")
    for batch in (1, 64, 256):
        reqs = [f"req-{i}" for i in range(batch)]
        zeros = [0] * batch
        ones = [1] * batch
        firsts = [7] * batch
        for shape in ("numpy", "nested", "lists"):
            cols = columns(batch, shape)
            number = max(200, 200_000 // batch) if not args.quick else max(50, 20_000 // batch)
            step = [0]

            def call_noop():
                noop(step[0], 0, reqs, zeros, ones, None, firsts, top_k=K, **cols)

            def call_probe():
                step[0] += 1
                probe.record_step(step[0], monotonic_ns(), reqs, zeros, ones, None, firsts, top_k=K, **cols)

            def call_otel():
                with tracer.start_as_current_span("step") as span:
                    span.set_attribute("step", step[0])
                    span.set_attribute("req_ids", reqs)
                    span.set_attribute("token_ids", np.asarray(cols["token_ids"]).ravel().tolist())
                    span.set_attribute("logprobs", np.asarray(cols["logprobs"]).ravel().tolist())
                    span.set_attribute("ranks", np.asarray(cols["ranks"]).ravel().tolist())
                    span.set_attribute("top_ids", np.asarray(cols["top_ids"]).ravel().tolist())
                    span.set_attribute("top_logprobs", np.asarray(cols["top_logprobs"]).ravel().tolist())

            t_noop = per_call(call_noop, number, repeat)
            t_probe = per_call(call_probe, number, repeat)
            t_otel = per_call(call_otel, max(20, number // 10), repeat)
            print(f"{batch:>5} {shape:>7} | {t_noop*1e9:>12.0f} | {t_probe*1e9:>16.0f} {t_probe*1e9/batch:>9.1f} "
                  f"{(t_probe-t_noop)*1e9/batch:>16.1f} | {t_otel*1e9:>12.0f} {t_otel*1e9/batch:>9.1f} "
                  f"{t_otel/t_probe:>13.0f}x")
            sys.stdout.flush()
    probe.shutdown(30.0)
    provider.shutdown()
    ring_full, too_big, write_failed, _ = probe.drops()
    print(f"(ring drops during the run: {ring_full} full, {too_big} too big, {write_failed} write failures; "
          "a drop still pays the full record cost, so per-step figures are unaffected)")

    # The .pth line as the interpreter runs it at every start-up, tracing off.
    env_backup = {k: os.environ.pop(k) for k in list(os.environ) if k in ("TOKTRACE_DIR", "TLLM_TOKTRACE_DIR")}
    line = 'import os; (os.environ.get("TOKTRACE_DIR") or os.environ.get("TLLM_TOKTRACE_DIR")) and __import__("toktrace._bootstrap")'
    code = compile(line, "toktrace.pth", "exec")
    t_line = per_call(lambda: exec(code, {}), 100_000, repeat)
    os.environ.update(env_backup)
    print(f".pth start-up line, tracing off: {t_line*1e9:.0f} ns per interpreter start")
    starts = []
    for _ in range(10 if not args.quick else 3):
        t0 = time.perf_counter()
        os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", "pass"])
        starts.append(time.perf_counter() - t0)
    print(f"(for scale: a whole `python -c pass` start here takes {statistics.median(starts)*1e3:.1f} ms)")


if __name__ == "__main__":
    main()
