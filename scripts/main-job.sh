#!/usr/bin/env bash
# The main job end to end: set up real vLLM (CPU) as CI does, record a trace
# of a mixed workload with a moment of interference, and show what was recorded.
# Usage: scripts/main-job.sh [OUT_DIR]
source "$(dirname "$0")/lib.sh"
cd "$REPO"
OUT="${1:-$REPO/out/main-job}"

stage "vLLM environment"
VLLM_VENV="$(bash "$REPO/scripts/setup-vllm.sh")"
install_toktrace "$VLLM_VENV"
TOKTRACE="$VLLM_VENV/bin/toktrace"

stage "record (real vLLM, tiny model)"
rm -rf "$OUT" && mkdir -p "$OUT"
TOKTRACE_DIR="$OUT/trace" VLLM_LOGGING_LEVEL=WARNING \
    "$VLLM_VENV/bin/python" "$REPO/fixtures/vllm_demo.py" > "$OUT/vllm.log" 2>&1 \
    || { tail -n 40 "$OUT/vllm.log"; exit 1; }
grep -E '^(vLLM:|  )' "$OUT/vllm.log"

stage "show"
"$TOKTRACE" info "$OUT/trace"
echo
echo "slowest engine steps (the long prompt's prefill stands out):"
"$TOKTRACE" steps "$OUT/trace" --slowest --limit 6
echo
echo "steps around it:"
"$TOKTRACE" steps "$OUT/trace" | sed -n '1,2p;12,20p'
stage_end
echo "trace written to $OUT/trace (vLLM's log: $OUT/vllm.log); every record: $TOKTRACE dump $OUT/trace"
