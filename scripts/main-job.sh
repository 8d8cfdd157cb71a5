#!/usr/bin/env bash
# The main job end to end: set up real vLLM (CPU) as CI does, record a trace
# of a mixed workload with a moment of interference, and show the analysis:
# the summary, the slowest requests and whose work stalled them.
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

stage "analyse"
"$TOKTRACE" summary "$OUT/trace"
echo
echo "slowest requests (largest inter-token gap) and who delayed them:"
"$TOKTRACE" requests "$OUT/trace" --slowest 5
SLOWEST="$("$TOKTRACE" requests "$OUT/trace" --slowest 1 --json \
    | "$VLLM_VENV/bin/python" -c 'import json,sys; r=json.load(sys.stdin); print(r[0]["internal_id"] if r else "")')"
if [ -n "$SLOWEST" ]; then
    echo
    echo "why request $SLOWEST stalled:"
    "$TOKTRACE" interference "$OUT/trace" --request "$SLOWEST" --limit 3
fi
echo
echo "slowest engine steps:"
"$TOKTRACE" steps "$OUT/trace" --slowest --limit 5

stage "incident-review exports"
"$TOKTRACE" export "$OUT/trace" --format html --out "$OUT/report.html"
"$TOKTRACE" export "$OUT/trace" --format perfetto --out "$OUT/trace.pftrace"
"$TOKTRACE" export "$OUT/trace" --format parquet --out "$OUT/parquet"
stage_end
echo
echo "trace written to $OUT/trace (vLLM's log: $OUT/vllm.log). Next:"
echo "  $TOKTRACE tokens $OUT/trace --request ${SLOWEST:-ID}     # token by token"
echo "  $TOKTRACE interference $OUT/trace                  # offender ranking"
echo "  $TOKTRACE view $OUT/trace --request ${SLOWEST:-ID}       # terminal viewer"
echo "  open $OUT/report.html; load $OUT/trace.pftrace at ui.perfetto.dev"
echo "  $TOKTRACE dump $OUT/trace | head                   # raw records"
