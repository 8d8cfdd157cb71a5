"""Zero-code activation in fresh interpreters: off, on, bad settings, failing
adapters, idempotency, spawn and fork children, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import clean_env, dump, process_dirs, records, run_py

ENGINE = "import fakeengine, fake_adapter\nprint(fakeengine.generate(3))\n"


def test_off_imports_nothing(trace_dir: Path):
    proc = run_py(
        "import sys, fakeengine\nprint(sorted(m for m in sys.modules if m.startswith('toktrace')))",
        clean_env(),
    )
    assert proc.stdout.strip() == "[]"
    assert proc.stderr == ""
    assert not trace_dir.exists()


def test_on_but_no_engine_loads_no_probe(trace_dir: Path):
    proc = run_py(
        "import sys\nprint('toktrace._native' in sys.modules, 'toktrace.hooks' in sys.modules)",
        clean_env(TOKTRACE_DIR=str(trace_dir)),
    )
    assert proc.stdout.split() == ["False", "True"]
    assert proc.stderr == ""
    assert not trace_dir.exists()


def test_importing_the_engine_applies_its_adapter(trace_dir: Path):
    code = ENGINE + "fake_adapter.record_steps(5)\n"
    proc = run_py(code, clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=fake_adapter"))
    assert proc.stdout == "[0, 1, 2]\n"
    assert proc.stderr == ""
    [pdir] = process_dirs(trace_dir)
    info = records(pdir, "Process")
    assert info[0]["engine"] == "fakeengine" and info[0]["engine_version"] == "9.9.9"
    assert info[0]["special_tokens"]["bos"] == 1
    assert [s["step_id"] for s in records(pdir, "Step")] == [0, 1, 2, 3, 4]
    header = records(pdir, "Header")[0]
    assert header["role"] == "fake-engine"


def test_tensorrt_llm_spelling_activates(trace_dir: Path):
    code = ENGINE + "fake_adapter.record_steps(2)\n"
    run_py(code, clean_env(TLLM_TOKTRACE_DIR=str(trace_dir), TLLM_TOKTRACE_ADAPTERS="fakeengine=fake_adapter"))
    assert len(process_dirs(trace_dir)) == 1


def test_bad_setting_warns_once_and_leaves_the_program_alone(trace_dir: Path):
    baseline = run_py(ENGINE, clean_env())
    proc = run_py(
        ENGINE + "fake_adapter.record_steps(3)\n",
        clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_CAPTURE="everything",
                  TOKTRACE_ADAPTERS="fakeengine=fake_adapter"),
    )
    assert proc.stdout == baseline.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "TOKTRACE_CAPTURE" in lines[0] and "tracing is off" in lines[0]
    assert not trace_dir.exists()


def test_failing_adapter_leaves_output_unchanged(trace_dir: Path):
    baseline = run_py(ENGINE, clean_env())
    proc = run_py(ENGINE, clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=broken_adapter"))
    assert proc.returncode == 0
    assert proc.stdout == baseline.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "fakeengine 9.9.9" in lines[0] and "Scheduler" in lines[0] and "untraced" in lines[0]


def test_missing_adapter_is_one_warning(trace_dir: Path):
    proc = run_py(ENGINE, clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=no_such_adapter"))
    assert proc.stdout == "[0, 1, 2]\n"
    assert proc.stderr.count("\n") == 1 and "no adapter for fakeengine 9.9.9" in proc.stderr


def test_adapter_applies_once_per_process(trace_dir: Path, tmp_path: Path):
    marker = tmp_path / "applied"
    code = ENGINE + textwrap.dedent(
        """
        import sys
        from toktrace import activate
        # The .pth hook already fired; an engine plugin entry point fires too.
        activate.install_from_env()
        activate.apply(sys.modules["fakeengine"], "fake_adapter")
        activate.apply(sys.modules["fakeengine"], "fake_adapter")
        print(activate.applied())
        """
    )
    proc = run_py(code, clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=fake_adapter",
                                  FAKE_ADAPTER_MARKER=str(marker)))
    assert "{'fakeengine': 'ok'}" in proc.stdout
    assert len(marker.read_text().splitlines()) == 1


CHILDREN = textwrap.dedent(
    """
    import multiprocessing as mp
    import os
    import fakeengine, fake_adapter

    def child(first):
        fake_adapter.record_steps(4, first=first)

    if __name__ == "__main__":
        fake_adapter.record_steps(3)
        for first, method in ((100, "spawn"), (200, "fork")):
            p = mp.get_context(method).Process(target=child, args=(first,))
            p.start()
            p.join()
            assert p.exitcode == 0, (method, p.exitcode)
        fake_adapter.record_steps(2, first=10)
        print("done")
    """
)


def test_spawn_and_fork_children_write_their_own_traces(trace_dir: Path, tmp_path: Path):
    script = tmp_path / "server.py"
    script.write_text(CHILDREN)
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=fake_adapter"),
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    dirs = process_dirs(trace_dir)
    assert len(dirs) == 3, dirs
    by_first = {}
    pids = set()
    for d in dirs:
        steps = [s["step_id"] for s in records(d, "Step")]
        by_first[steps[0]] = steps
        pids.add(records(d, "Header")[0]["pid"])
    assert len(pids) == 3
    assert by_first == {0: [0, 1, 2, 10, 11], 100: [100, 101, 102, 103], 200: [200, 201, 202, 203]}


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    {install}
    import fakeengine, fake_adapter
    fake_adapter.record_steps(2000)
    os.kill(os.getpid(), signal.SIGTERM)
    import time; time.sleep(30)
    print("not reached")
    """
)


def test_sigterm_flushes_then_dies_as_before(trace_dir: Path):
    proc = run_py(
        SIGTERM_SCRIPT.format(install=""),
        clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=fake_adapter"),
        check=False,
    )
    assert proc.returncode == -signal.SIGTERM
    assert len(records(trace_dir, "Step")) == 2000


def test_sigterm_chains_to_the_engines_own_handler(trace_dir: Path):
    install = (
        "def handler(signum, frame):\n"
        "    print('engine handler ran', flush=True)\n"
        "    sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, handler)"
    )
    proc = run_py(
        SIGTERM_SCRIPT.format(install=install),
        clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=fake_adapter"),
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "engine handler ran\n"
    assert len(records(trace_dir, "Step")) == 2000


def test_unwritable_trace_dir_keeps_the_program_running(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = ENGINE + "fake_adapter.record_steps(50)\nprint('finished')\n"
    proc = run_py(code, clean_env(TOKTRACE_DIR=str(blocker / "trace"), TOKTRACE_ADAPTERS="fakeengine=fake_adapter"))
    assert proc.stdout == "[0, 1, 2]\nfinished\n"
    assert proc.stderr.count("cannot write trace") == 1, proc.stderr


def test_dump_reads_back_through_rust(trace_dir: Path):
    run_py(ENGINE + "fake_adapter.record_steps(1)\n",
           clean_env(TOKTRACE_DIR=str(trace_dir), TOKTRACE_ADAPTERS="fakeengine=fake_adapter"))
    kinds = [next(iter(r["record"])) for r in dump(trace_dir)]
    assert kinds[0] == "Header" and "Process" in kinds and "Step" in kinds and "Arrival" in kinds
