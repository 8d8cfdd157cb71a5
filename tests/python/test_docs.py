"""The docs stay true: their tables of measured figures are generated from
Tier 2's result files (`scripts/results.py`), their relative links resolve,
and their command blocks marked runnable run on the fixture trace they name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_generated_tables_match_the_result_files():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "results.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the page's headings (lower case, punctuation out, spaces to dashes)."""
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return found


def test_every_relative_link_in_the_docs_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


# <!-- runnable: TRACE=path/of/a/fixture/trace --> right before a ```sh block.
RUNNABLE = re.compile(r"<!-- runnable: TRACE=(\S+) -->\n```sh\n(.*?)```", re.S)


def runnable_blocks() -> list[tuple[str, str, str]]:
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for n, (trace, block) in enumerate(RUNNABLE.findall(page.read_text())):
            found.append((f"{page.relative_to(REPO)}#{n}", trace, block))
    return found


def test_the_docs_have_runnable_blocks():
    assert len(runnable_blocks()) >= 2


@pytest.mark.parametrize("where,trace,block", [pytest.param(*b, id=b[0]) for b in runnable_blocks()])
def test_runnable_block(where: str, trace: str, block: str, tmp_path: Path) -> None:
    from conftest import toktrace_cli

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "toktrace").symlink_to(toktrace_cli())
    env = {**os.environ, "TRACE": str(REPO / trace), "OUT": str(tmp_path),
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # Each line on its own, so that a failure names the command.
    for command in filter(str.strip, block.splitlines()):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{where}: {command}\n{proc.stderr[-2000:]}"


def test_the_readme_viewer_screen_is_what_the_viewer_draws() -> None:
    import shutil

    from conftest import toktrace_cli

    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed: the viewer's screen cannot be captured")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "pictures.py"), "--check",
                           "--toktrace", toktrace_cli()], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
