"""``toktrace doctor``: will this environment's engine be traced, and how?

Run inside the server's environment before deploying. It imports each
engine installed here without starting it and answers what activation would
do: the engine and its version, the layout chosen (and whether the release
was tested), every hook point that layout relies on (ok / missing /
signature changed), whether the ``toktrace.pth`` start-up hook is processed
in this environment, and whether ``TOKTRACE_DIR`` is writable.

Exit code: 0 when every engine installed here will be traced; 1 when one
will not, or when no engine is installed; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from toktrace.adapters import BUILTIN
from toktrace.adapters import _common as C


def _engine_report(engine: str, adapter_name: str) -> dict[str, Any] | None:
    """What activation would do for `engine`; None when it is not installed."""
    if importlib.util.find_spec(engine) is None:
        return None
    report: dict[str, Any] = {"engine": engine, "traced": False}
    try:
        module = importlib.import_module(engine)
    except Exception as exc:  # noqa: BLE001 - a broken install is an answer too
        report["problem"] = f"import {engine} failed: {type(exc).__name__}: {exc}"
        return report
    from toktrace.activate import engine_version

    version = engine_version(module)
    report["version"] = version
    adapter = importlib.import_module(adapter_name)
    layouts = getattr(adapter, "LAYOUTS", None)
    if layouts is None:
        report["problem"] = f"the {engine} adapter has no version table"
        return report
    report["supported"] = C.ranges_text(layouts)
    try:
        layout, tested = C.choose_layout(engine, version, layouts)
    except C.AdapterError as exc:
        report["problem"] = str(exc)
        return report
    report["layout"] = layout.rsplit(".", 1)[-1]
    report["tested"] = tested
    points = getattr(importlib.import_module(layout), "hook_points", None)
    checks = C.check_points(points(version)) if points is not None else []
    report["hook_points"] = [{"where": c.where, "status": c.status, "detail": c.detail} for c in checks]
    failed = [c for c in checks if c.status != "ok"]
    if failed:
        report["problem"] = f"{len(failed)} hook point(s) differ: the adapter would refuse {engine} at start-up"
        return report
    report["traced"] = True
    return report


def _pth_report() -> dict[str, Any]:
    """Whether a fresh interpreter of this environment runs ``toktrace.pth``:
    with TOKTRACE_DIR set, the hook imports ``toktrace._bootstrap``."""
    with tempfile.TemporaryDirectory(prefix="toktrace-doctor-") as tmp:
        env = {**os.environ, "TOKTRACE_DIR": tmp}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", "import sys; print('toktrace._bootstrap' in sys.modules)"],
                env=env, capture_output=True, text=True, timeout=120)
            processed = proc.returncode == 0 and proc.stdout.strip().endswith("True")
        except (OSError, subprocess.SubprocessError):
            processed = False
    return {"processed": processed,
            "detail": "a server started from this environment with TOKTRACE_DIR set is traced without code changes"
            if processed else
            "toktrace.pth is not processed here (python -S, a site-packages that is not a site dir?): "
            "only the engines' own plugin entry points can activate tracing"}


def _dir_report() -> dict[str, Any]:
    path = os.environ.get("TOKTRACE_DIR")
    if not path:
        return {"set": False, "detail": "TOKTRACE_DIR is not set: tracing is off until it is"}
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".toktrace-doctor-"):
            pass
        return {"set": True, "path": path, "writable": True, "detail": f"{path} is writable"}
    except OSError as exc:
        return {"set": True, "path": path, "writable": False, "detail": f"{path} is not writable: {exc}"}


def _print(engines: list[dict[str, Any]], pth: dict[str, Any], tdir: dict[str, Any], verbose: bool) -> None:
    if not engines:
        print("engines: none of vllm, sglang, tensorrt_llm is installed in this environment")
    for e in engines:
        head = f"{e['engine']} {e.get('version', '?')}"
        if e["traced"]:
            tested = "tested release" if e.get("tested") else "NOT a tested release (TOKTRACE_ALLOW_UNTESTED=1)"
            print(f"{head}: traced, layout {e['layout']} ({tested}; supported: {e['supported']})")
        else:
            print(f"{head}: NOT traced: {e.get('problem', '')}")
        for c in e.get("hook_points", []):
            if verbose or c["status"] != "ok":
                detail = f" ({c['detail']})" if c["detail"] else ""
                print(f"  {c['status']:<17} {c['where']}{detail}")
        if e.get("hook_points") and not verbose:
            ok = sum(1 for c in e["hook_points"] if c["status"] == "ok")
            print(f"  {ok} of {len(e['hook_points'])} hook points ok (--verbose lists them)")
    print(f".pth start-up hook: {'processed' if pth['processed'] else 'NOT processed'} — {pth['detail']}")
    print(f"TOKTRACE_DIR: {tdir['detail']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="toktrace doctor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=sorted(BUILTIN), help="check this engine only")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--verbose", "-v", action="store_true", help="list every hook point, not only those that differ")
    args = ap.parse_args(argv)
    engines = []
    # Engines log to stdout as they import (vLLM does): keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        for engine, adapter in sorted(BUILTIN.items()):
            if args.engine and engine != args.engine:
                continue
            report = _engine_report(engine, adapter)
            if report is not None:
                engines.append(report)
    pth, tdir = _pth_report(), _dir_report()
    ok = bool(engines) and all(e["traced"] for e in engines)
    if args.json:
        print(json.dumps({"traced": ok, "engines": engines, "pth": pth, "toktrace_dir": tdir}, indent=1))
    else:
        _print(engines, pth, tdir, args.verbose)
        print("verdict: " + ("traced" if ok else "NOT traced" if engines else "no engine to trace"))
    return 0 if ok else 1
