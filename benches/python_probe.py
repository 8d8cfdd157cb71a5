"""Python-level cost of recording one engine step, side by side in one run.

For batch sizes 1, 64 and 256 (one sampled token per request, top-5
logprobs) and for the shapes engines really hand over:

- ``vllm``: what the vLLM adapter passes — the batch as vLLM's
  scheduled-tokens dict and a list of tokens computed, each output's token
  list, LogprobsLists' [n, k+1] arrays whole (sampled token in column 0) with
  vLLM's request-id -> row dict, and each output's logprobs object as its
  flag, plus queue lengths and KV usage;
- ``numpy``: one numpy column per field, strided views for top-K;
- ``nested``: lists of lists (token ids) and list logprobs;
- ``lists``: SGLang's flat Python lists;

it times (calling thread's CPU time, the least of 15 runs of 200 calls, the median
beside it for toktrace), per step and per token:

- ``noop``: a no-op PyO3 call taking the same arguments (the floor);
- ``toktrace``: ``NativeProbe.record_step`` (builds the record, pushes it into the ring);
- ``otel``: the OpenTelemetry Python SDK recording the same data as one span
  per step with the token columns as attributes (batch span processor,
  exporter that discards) — the cheapest way to hand the SDK this data;
- ``otel events``: the same span with one event per token instead (request,
  token id, logprob, rank, top-K ids and logprobs; the span's event limit
  raised so none is dropped) — the SDK's per-token idiom.

The other shapes give the batch as prefill and decode lists. Output indices
are left to the probe (``run_first_index=None``), as the adapters do. Also measured: the
``toktrace.pth`` start-up line when tracing is off.

With ``--parts``, instead: at batch 256, per shape, the step with its batch
only, then with token ids, then with top-5 logprobs too — what each part
costs, by leaving the rest out.

With ``--json PATH``, the rows are also written there as JSON (with the
interpreter and which path read the objects): ``scripts/extended.sh
python-probe`` keeps them as result files.

Usage: python benches/python_probe.py [--quick] [--parts] [--json PATH]
Needs: the toktrace wheel, numpy, opentelemetry-sdk (tests/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import timeit

import numpy as np

from toktrace._native import NativeProbe, direct_reads, monotonic_ns, noop

K = 5


SHAPES = ("vllm", "numpy", "nested", "lists")


class LogprobsFlag:
    """Stands for a vLLM output's logprobs object (the adapter's per-run flag)."""


def columns(batch: int, shape: str) -> dict:
    """The keyword arguments of one step's token data, every shape naming the same keywords."""
    rng = np.random.default_rng(batch)
    ids = rng.integers(0, 150_000, size=(batch, K + 1), dtype=np.int64)
    lps = -np.sort(rng.random((batch, K + 1), dtype=np.float32), axis=1) * 10
    ranks = rng.integers(1, 4, size=batch, dtype=np.int64)
    none = dict(sampled_first=False, logprob_rows=None)
    if shape == "vllm":
        # Rows are named through vLLM's request-id -> row dict at the call.
        return dict(token_ids=[[int(x)] for x in ids[:, 0]], logprobs=None, ranks=ranks, top_ids=ids,
                    top_logprobs=lps, sampled_first=True, logprob_rows=None)
    if shape == "numpy":
        return dict(token_ids=ids[:, 0], logprobs=lps[:, 0], ranks=ranks, top_ids=ids[:, 1:],
                    top_logprobs=lps[:, 1:], **none)
    if shape == "nested":
        return dict(token_ids=[[int(x)] for x in ids[:, 0]], logprobs=lps[:, 0].tolist(), ranks=ranks.tolist(),
                    top_ids=ids[:, 1:].tolist(), top_logprobs=lps[:, 1:].tolist(), **none)
    return dict(token_ids=ids[:, 0].tolist(), logprobs=lps[:, 0].tolist(), ranks=ranks.tolist(),
                top_ids=ids[:, 1:].ravel().tolist(), top_logprobs=lps[:, 1:].ravel().tolist(), **none)


def candidates(cols: dict) -> tuple:
    """(token ids, logprobs, top ids, top logprobs) as flat lists, for the SDK's attributes."""
    top_ids, top_lps = np.asarray(cols["top_ids"]), np.asarray(cols["top_logprobs"])
    if cols["sampled_first"]:
        return (np.asarray(cols["token_ids"]).ravel().tolist(), top_lps[:, 0].tolist(),
                top_ids[:, 1:].ravel().tolist(), top_lps[:, 1:].ravel().tolist())
    return (np.asarray(cols["token_ids"]).ravel().tolist(), np.asarray(cols["logprobs"]).ravel().tolist(),
            top_ids.ravel().tolist(), top_lps.ravel().tolist())


def per_call(fn, number: int, repeat: int, settle=None) -> tuple[float, float]:
    """(Least, median) CPU seconds of the calling thread per call, over
    `repeat` runs of `number` calls. The least is the figure reported: on a
    shared VM interference only ever adds time (medians moved by 2x between
    runs hours apart, numpy 22.5 -> 41.5-49 ns/token). Thread CPU time, not wall time: on a 2-core machine the
    probe's drain thread and the SDK's export thread compete for cores with the
    calling thread, and what an engine pays is the CPU its own thread spends.
    `settle` runs (untimed) before each run: it lets the background thread
    catch up, as it does between an engine's steps (milliseconds apart). Back
    to back, the drain falls behind a loop that records a 256-token step every
    few microseconds, the spare step buffers run out and recording allocates
    afresh — a cost of this loop, not of an engine."""
    times = []
    for _ in range(repeat):
        if settle is not None:
            settle()
        times.append(timeit.timeit(fn, number=number, timer=time.thread_time))
    return min(times) / number, statistics.median(times) / number


def make_otel():
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    # Every token's event kept: the default limit (128 per span) would drop
    # most of a 256-token step.
    provider = TracerProvider(span_limits=SpanLimits(max_events=1 << 16))
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=65536))
    return provider, provider.get_tracer("toktrace-bench")


def parts(probe: NativeProbe, number: int, repeat: int) -> None:
    """What each part of a 256-request step costs, by leaving the rest out."""
    batch = 256
    reqs = [f"req-{i}" for i in range(batch)]
    print(f"batch {batch}, ns/token (keywords passed as **kwargs here, the same for every part)")
    print(f"{'shape':>7} | {'batch only':>10} | {'+ token ids':>11} | {'+ top-5 logprobs':>16}")
    for shape in SHAPES:
        c = columns(batch, shape)
        if shape == "vllm":
            batch_kw = dict(prefill=None, decode=None, scheduled=dict.fromkeys(reqs, 1),
                            computed=[100 + i for i in range(batch)])
            lp_kw = dict(top_k=K, top_ids=c["top_ids"], top_logprobs=c["top_logprobs"], ranks=c["ranks"],
                         sampled_first=True, logprob_rows={r: i for i, r in enumerate(reqs)},
                         run_has_logprobs=[LogprobsFlag() for _ in reqs])
        else:
            batch_kw = dict(prefill=[0] * batch, decode=[1] * batch)
            lp_kw = dict(top_k=K, logprobs=c["logprobs"], ranks=c["ranks"], top_ids=c["top_ids"],
                         top_logprobs=c["top_logprobs"])
        cells = []
        for kw in (batch_kw, {**batch_kw, "token_ids": c["token_ids"]},
                   {**batch_kw, "token_ids": c["token_ids"], **lp_kw}):
            def call(kw=kw):
                probe.record_step(1, monotonic_ns(), reqs, run_reqs=None, run_first_index=None, **kw)
            cells.append(per_call(call, number, repeat, settle=lambda: probe.flush(30.0))[0] * 1e9 / batch)
        print(f"{shape:>7} | {cells[0]:>10.1f} | {cells[1]:>11.1f} | {cells[2]:>16.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--parts", action="store_true", help="split the cost of a 256-request step by part")
    ap.add_argument("--json", metavar="PATH", help="also write the rows to PATH as JSON")
    args = ap.parse_args()
    repeat = 3 if args.quick else 15
    root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = tempfile.mkdtemp(prefix="toktrace-bench-", dir=root)
    probe = NativeProbe(tmp, ring_slots=1024, ring_bytes=64 << 20)
    if args.parts:
        try:
            parts(probe, 200 if not args.quick else 50, repeat)
        finally:
            probe.shutdown(30.0)
            shutil.rmtree(tmp, ignore_errors=True)
        return
    provider, tracer = make_otel()
    reads = direct_reads()
    print(f"objects read by: {reads['path']} ({reads['why']})")
    out_rows: list[dict] = []

    print(f"{'batch':>5} {'shape':>7} | {'noop ns/step':>12} | {'toktrace ns/step':>16} {'ns/token':>9} "
          f"{'median ns/tok':>13} {'over noop ns/tok':>16} | {'otel ns/step':>12} {'ns/token':>9} {'otel/toktrace':>13} | "
          f"{'events ns/token':>15} {'events/toktrace':>15}")
    for batch in (1, 64, 256):
        reqs = [f"req-{i}" for i in range(batch)]
        zeros = [0] * batch
        ones = [1] * batch
        # The vLLM adapter's batch and flags: vLLM's own dicts and objects.
        scheduled = dict.fromkeys(reqs, 1)
        computed = [100 + i for i in range(batch)]
        row_of = {r: i for i, r in enumerate(reqs)}
        flags = [LogprobsFlag() for _ in reqs]
        for shape in SHAPES:
            c = columns(batch, shape)
            tok, lp, rk, ti, tl = c["token_ids"], c["logprobs"], c["ranks"], c["top_ids"], c["top_logprobs"]
            sf, rows = c["sampled_first"], c["logprob_rows"]
            # At most 200 calls a run: fewer than the probe's spare step buffers.
            number = 200 if not args.quick else 50
            step = [0]

            # Explicit keywords, as the adapters call it.
            if shape == "vllm":
                def call_noop():
                    noop(step[0], 0, reqs, None, None, None, None, token_ids=tok, scheduled=scheduled,
                         computed=computed, cached=None, waiting=0, running=batch, kv_usage=0.5,
                         preempted=None, finished=None, top_k=K, top_ids=ti, top_logprobs=tl, ranks=rk,
                         sampled_first=True, logprob_rows=row_of, run_has_logprobs=flags)

                def call_probe():
                    step[0] += 1
                    probe.record_step(step[0], monotonic_ns(), reqs, None, None, None, None, token_ids=tok,
                                      scheduled=scheduled, computed=computed, cached=None, waiting=0,
                                      running=batch, kv_usage=0.5, preempted=None, finished=None, top_k=K,
                                      top_ids=ti, top_logprobs=tl, ranks=rk, sampled_first=True,
                                      logprob_rows=row_of, run_has_logprobs=flags)
            else:
                def call_noop():
                    noop(step[0], 0, reqs, zeros, ones, None, None, token_ids=tok, top_k=K, logprobs=lp,
                         ranks=rk, top_ids=ti, top_logprobs=tl, sampled_first=sf, logprob_rows=rows)

                def call_probe():
                    step[0] += 1
                    probe.record_step(step[0], monotonic_ns(), reqs, zeros, ones, None, None, token_ids=tok,
                                      top_k=K, logprobs=lp, ranks=rk, top_ids=ti, top_logprobs=tl,
                                      sampled_first=sf, logprob_rows=rows)

            def call_otel():
                # The SDK takes flat lists of primitives: converting is part of its cost.
                t_ids, t_lps, c_ids, c_lps = candidates(c)
                with tracer.start_as_current_span("step") as span:
                    span.set_attribute("step", step[0])
                    span.set_attribute("req_ids", reqs)
                    span.set_attribute("token_ids", t_ids)
                    span.set_attribute("logprobs", t_lps)
                    span.set_attribute("ranks", np.asarray(rk).ravel().tolist())
                    span.set_attribute("top_ids", c_ids)
                    span.set_attribute("top_logprobs", c_lps)

            def call_otel_events():
                t_ids, t_lps, c_ids, c_lps = candidates(c)
                t_rks = np.asarray(rk).ravel().tolist()
                with tracer.start_as_current_span("step") as span:
                    span.set_attribute("step", step[0])
                    for i in range(batch):
                        span.add_event("token", {
                            "req_id": reqs[i], "token_id": t_ids[i], "logprob": t_lps[i], "rank": t_rks[i],
                            "top_ids": c_ids[i * K:(i + 1) * K], "top_logprobs": c_lps[i * K:(i + 1) * K]})

            t_noop, _ = per_call(call_noop, number, repeat)
            t_probe, t_probe_median = per_call(call_probe, number, repeat, settle=lambda: probe.flush(30.0))
            t_otel, _ = per_call(call_otel, max(20, number // 10), repeat, settle=lambda: provider.force_flush())
            t_events, _ = per_call(call_otel_events, max(5, number // 40), repeat,
                                settle=lambda: provider.force_flush())
            print(f"{batch:>5} {shape:>7} | {t_noop*1e9:>12.0f} | {t_probe*1e9:>16.0f} {t_probe*1e9/batch:>9.1f} "
                  f"{t_probe_median*1e9/batch:>13.1f} {(t_probe-t_noop)*1e9/batch:>16.1f} | {t_otel*1e9:>12.0f} {t_otel*1e9/batch:>9.1f} "
                  f"{t_otel/t_probe:>13.0f}x | {t_events*1e9/batch:>15.1f} {t_events/t_probe:>14.0f}x")
            sys.stdout.flush()
            out_rows.append({"batch": batch, "shape": shape, "noop_ns_per_step": t_noop * 1e9,
                         "toktrace_ns_per_token": t_probe * 1e9 / batch,
                         "toktrace_median_ns_per_token": t_probe_median * 1e9 / batch,
                         "otel_attributes_ns_per_token": t_otel * 1e9 / batch,
                         "otel_events_ns_per_token": t_events * 1e9 / batch})
    probe.shutdown(30.0)
    provider.shutdown()
    # The trace is ~1 GB on tmpfs, i.e. memory: never leave it behind.
    shutil.rmtree(tmp, ignore_errors=True)
    ring_full, too_big, write_failed, _ = probe.drops()
    print(f"(ring drops during the run: {ring_full} full, {too_big} too big, {write_failed} write failures; "
          "a drop still pays the full record cost, so per-step figures are unaffected)")

    # The .pth line as the interpreter runs it at every start-up, tracing off.
    env_backup = {k: os.environ.pop(k) for k in list(os.environ) if k in ("TOKTRACE_DIR", "TLLM_TOKTRACE_DIR")}
    line = 'import os; (os.environ.get("TOKTRACE_DIR") or os.environ.get("TLLM_TOKTRACE_DIR")) and __import__("toktrace._bootstrap")'
    code = compile(line, "toktrace.pth", "exec")
    t_line, _ = per_call(lambda: exec(code, {}), 100_000, repeat)
    os.environ.update(env_backup)
    print(f".pth start-up line, tracing off: {t_line*1e9:.0f} ns per interpreter start")
    starts = []
    for _ in range(10 if not args.quick else 3):
        t0 = time.perf_counter()
        os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", "pass"])
        starts.append(time.perf_counter() - t0)
    print(f"(for scale: a whole `python -c pass` start here takes {statistics.median(starts)*1e3:.1f} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "objects_read_by": direct_reads(),
                       "quick": args.quick, "runs": repeat, "rows": out_rows,
                       "pth_line_ns": t_line * 1e9}, f, indent=1)


if __name__ == "__main__":
    main()
