#!/usr/bin/env bash
# The main job end to end: record a trace through the real probe and show it.
# Usage: scripts/main-job.sh [OUT_DIR]
source "$(dirname "$0")/lib.sh"
cd "$REPO"
OUT="${1:-$REPO/out/main-job}"

stage "build"
VENV="$(venv_for test "$REPO/tests/requirements.txt")"
install_toktrace "$VENV"

stage "record"
rm -rf "$OUT" && mkdir -p "$OUT"
TOKTRACE_DIR="$OUT/trace" "$VENV/bin/python" "$REPO/fixtures/synthetic_engine.py" --steps 400 --batch 32

stage "show"
"$VENV/bin/toktrace" info "$OUT/trace"
echo
echo "first records:"
"$VENV/bin/toktrace" dump "$OUT/trace" | head -n 5 | cut -c1-200
stage_end
echo "trace written to $OUT/trace"
