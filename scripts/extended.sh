#!/usr/bin/env bash
# Tier 2: the long runs that do not fit CI's 90 minutes — the compatibility
# matrix, soaks, validations, benchmarks. Run by hand, resumable item by item.
#
# Usage:
#   scripts/extended.sh --list                 the suites and their items
#   scripts/extended.sh SUITE [ITEM...]        run SUITE's items (all by default)
#   scripts/extended.sh --again SUITE [ITEM...]   run them even if already done
#
# Each suite is a file scripts/extended/SUITE.sh defining `suite_items` (prints
# one item name a line) and `suite_run ITEM OUT` (runs one item, writes its
# figures as a JSON object to OUT, exits non-zero if the item failed).
#
# Every finished item, passed or failed, leaves a dated result file,
#   results/SUITE/ITEM/YYYY-MM-DD.json
# holding the item's JSON under "data" and where it came from: the commit, a
# hash of the sources that shape the result ("source"), the machine, the
# duration and the outcome. Results are committed; the docs' tables are made
# from them (scripts/results.py, run after each item), never typed. An item whose newest result
# was made from the same sources is skipped, so an interrupted suite picks up
# at the next item, in this session or a later one. A result is written
# beside its final name and renamed, so a killed run leaves none half-written.
#
# Exit code: 0 when every item run passed (or was skipped), 1 when one
# failed, 2 for a usage error.
source "$(dirname "$0")/lib.sh"
cd "$REPO"

SUITES_DIR="$REPO/scripts/extended"
RESULTS="$REPO/results"

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

list_suites() {
    local f
    for f in "$SUITES_DIR"/*.sh; do
        local name
        name="$(basename "$f" .sh)"
        echo "$name: $(sed -n '1s/^# //p' "$f")"
        ( source "$f"; suite_items | sed 's/^/    /' )
    done
}

again=0
case "${1:-}" in
    ""|-h|--help) usage; exit 0 ;;
    --list) list_suites; exit 0 ;;
    --again) again=1; shift ;;
esac
suite="${1:-}"
[ -n "$suite" ] || { usage >&2; exit 2; }
shift
if [ ! -f "$SUITES_DIR/$suite.sh" ]; then
    echo "extended: no suite '$suite' (see scripts/extended.sh --list)" >&2
    exit 2
fi
SUITE_SOURCES=()
# shellcheck source=/dev/null
source "$SUITES_DIR/$suite.sh"

mapfile -t known < <(suite_items)
if [ $# -gt 0 ]; then
    wanted=("$@")
    for w in "${wanted[@]}"; do
        printf '%s\n' "${known[@]}" | grep -qxF -- "$w" || {
            echo "extended: suite '$suite' has no item '$w' (it has: ${known[*]})" >&2
            exit 2
        }
    done
else
    wanted=("${known[@]}")
fi

# The sources a suite's results depend on (the suite may name more with
# SUITE_SOURCES): a change there makes every item due again.
source_stamp() {
    git ls-files -s bindings-python engine-adapters probe-core Cargo.lock \
        "scripts/extended/$suite.sh" "${SUITE_SOURCES[@]}" | sha256sum | cut -c1-16
}
stamp="$(source_stamp)"
# The commit the results come from: the one checked out when the suite began.
commit="$(git rev-parse HEAD)"
if ! git diff --quiet HEAD -- bindings-python engine-adapters probe-core "scripts/extended/$suite.sh" "${SUITE_SOURCES[@]}"; then
    stamp="$stamp-dirty"
    echo "extended: uncommitted changes in the sources: results are marked $stamp" >&2
fi

# The newest result of an item, if any.
newest_result() { { ls "$RESULTS/$suite/$1"/*.json 2>/dev/null || true; } | sort | tail -n 1; }

machine_json() {
    python3 - <<'PY'
import json, os, platform
model = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
mem = 0
try:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
except (ValueError, OSError):
    pass
print(json.dumps({"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
                  "kernel": platform.release()}))
PY
}

failed=0
total=${#wanted[@]}
n=0
for item in "${wanted[@]}"; do
    n=$((n + 1))
    prev="$(newest_result "$item")"
    if [ "$again" = 0 ] && [ -n "$prev" ] && python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])).get("source") != sys.argv[2])' "$prev" "$stamp"; then
        echo "==> [$n/$total] $suite/$item: done already ($(basename "$prev")), skipped"
        continue
    fi
    echo "==> [$n/$total] $suite/$item"
    out="$(mktemp)"
    t0=$(date +%s)
    started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    set +e
    ( suite_run "$item" "$out" )
    rc=$?
    set -e
    secs=$(( $(date +%s) - t0 ))
    outcome=pass
    [ "$rc" = 0 ] || { outcome=fail; failed=1; }
    dir="$RESULTS/$suite/$item"
    mkdir -p "$dir"
    final="$dir/$(date -u +%Y-%m-%d).json"
    python3 - "$out" "$final.tmp" "$suite" "$item" "$started" "$secs" "$outcome" "$stamp" \
        "$commit" "$(machine_json)" <<'PY'
import json, sys
out, dest, suite, item, started, secs, outcome, stamp, commit, machine = sys.argv[1:]
try:
    data = json.load(open(out))
except (OSError, ValueError) as e:
    data = {"error": f"the item wrote no JSON: {e}"}
json.dump({"suite": suite, "item": item, "started": started, "seconds": int(secs), "outcome": outcome,
           "commit": commit, "source": stamp, "machine": json.loads(machine), "data": data},
          open(dest, "w"), indent=1, sort_keys=False)
PY
    mv "$final.tmp" "$final"
    rm -f "$out"
    # The docs' tables follow the results at once (a test fails when they drift).
    python3 "$REPO/scripts/results.py" --write
    echo "==> [$n/$total] $suite/$item: $outcome in ${secs} s -> ${final#"$REPO"/}"
done
exit $failed
