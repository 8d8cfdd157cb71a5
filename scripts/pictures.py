#!/usr/bin/env python3
"""Make the README's pictures from a trace recorded on real vLLM, so they stay true.

    python3 scripts/pictures.py [--toktrace PATH] [--check]

- The terminal viewer: `toktrace view` run in a tmux window of 100 × 24 on
  the slowest token of `decode-0` in fixtures/traces/vllm-interference (a
  3,858-token prefill stalling four decoding requests), captured as text
  into the README between `<!-- picture:viewer -->` markers.
- The HTML report of the same trace, exported and rendered by headless
  Chromium into docs/pictures/report.png.

--check only compares the README's viewer screen with a fresh capture
(exit 1 when they differ). Needs tmux (and Chromium for the report).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACE = "fixtures/traces/vllm-interference/trace"
REQUEST = "decode-0"
SIZE = (100, 24)
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- picture:viewer -->\n```text\n)(.*?)(```\n<!-- /picture:viewer -->)", re.S)
REPORT = REPO / "docs" / "pictures" / "report.png"


def viewer_screen(toktrace: str) -> str:
    """What the viewer shows, opened on the request, once it has drawn."""
    with tempfile.TemporaryDirectory() as tmp:
        tmux = ["tmux", "-S", str(Path(tmp) / "sock")]
        command = f"{toktrace} view {TRACE} --request {REQUEST} --tokenizer fixtures/tiny-llama"
        subprocess.run([*tmux, "new-session", "-d", "-x", str(SIZE[0]), "-y", str(SIZE[1]), "-c", str(REPO),
                        command], check=True)
        try:
            screen = ""
            for _ in range(600):  # a hang guard: it draws in well under a second
                screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                                        check=True).stdout
                if "culprits" in screen and "q quit" in screen:
                    break
                time.sleep(0.1)
            else:
                raise SystemExit(f"pictures: the viewer never drew its screen:\n{screen}")
        finally:
            subprocess.run([*tmux, "kill-server"], check=False)
    return "\n".join(line.rstrip() for line in screen.rstrip("\n").splitlines()) + "\n"


def report_png(toktrace: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("pictures: chromium is not installed (scripts/lib.sh ensure_chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "report.html"
        subprocess.run([toktrace, "export", str(REPO / TRACE), "--format", "html", "--out", str(html)], check=True)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--hide-scrollbars", "--window-size=1100,1300", f"--screenshot={REPORT}",
                        html.as_uri()], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toktrace", default=shutil.which("toktrace") or "toktrace",
                        help="the toktrace command (default: the one on PATH)")
    parser.add_argument("--check", action="store_true", help="compare the README's viewer screen only")
    args = parser.parse_args()
    readme = README.read_text()
    if not BLOCK.search(readme):
        raise SystemExit("pictures: README.md has no <!-- picture:viewer --> block")
    screen = viewer_screen(args.toktrace)
    new = BLOCK.sub(lambda m: m.group(1) + screen + m.group(3), readme)
    if args.check:
        if new != readme:
            print("pictures: the README's viewer screen is out of date (run python3 scripts/pictures.py)",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    report_png(args.toktrace)
    print(f"pictures: README.md viewer screen, {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
