"""Helpers for the Python tests: fresh interpreters, trace dumps, fixtures on PYTHONPATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"


def toktrace_cli() -> str:
    """The toktrace console command of the venv running the tests."""
    exe = Path(sys.executable).parent / "toktrace"
    if exe.exists():
        return str(exe)
    found = shutil.which("toktrace")
    assert found, "toktrace CLI not installed in the test environment"
    return found


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the toktrace CLI; its output is text."""
    return subprocess.run([toktrace_cli(), *args], capture_output=True, text=True, timeout=180)


def cli_json(*args: str) -> Any:
    """What `toktrace ARGS --json` prints, parsed (the command must succeed)."""
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any toktrace setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    env["PYTHONPATH"] = str(SUPPORT)
    env.update(extra)
    return env


def run_py(code: str, env: dict[str, str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (so the .pth hook runs as in a server)."""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def dump(path: Path) -> list[dict]:
    """Every record of a trace, via the Rust reader (`toktrace dump`)."""
    proc = subprocess.run([toktrace_cli(), "dump", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def records(path: Path, kind: str) -> list[dict]:
    """The records of one kind (e.g. "Step"), in file order."""
    return [r["record"][kind] for r in dump(path) if kind in r["record"]]


def process_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    return tmp_path / "trace"


def second_user() -> int | None:
    """The uid of `toktrace-other`, made with useradd when missing (root only;
    CI runs as root). None when it cannot be had."""
    import pwd

    try:
        return pwd.getpwnam("toktrace-other").pw_uid
    except KeyError:
        pass
    if os.geteuid() != 0:
        return None
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "toktrace-other"], capture_output=True)
    try:
        return pwd.getpwnam("toktrace-other").pw_uid
    except KeyError:
        return None
