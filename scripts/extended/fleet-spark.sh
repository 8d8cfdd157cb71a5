# The fleet questions on Spark SQL (PySpark in local mode) against `toktrace
# fleet` (polars) over one dataset of the real-engine fixture traces: the same
# SQL files, equal answers (tests/fleet/test_spark.py). Tier 2 because Spark
# and Java take minutes to set up; DuckDB's equality is in Tier 1
# (tests/python/test_fleet.py).

SUITE_SOURCES=(tests/fleet bindings-python/python/toktrace/fleet.py bindings-python/python/toktrace/queries
               exports/src/dataset.rs viewer/src/fleet.rs fixtures/traces)

suite_items() {
    printf '%s\n' pyspark-4.3.0
}

suite_run() {
    local item="$1" out="$2"
    local venv junit rc
    if ! java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq >&2
        $sudo apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >&2
    fi
    venv="$(venv_for fleet-spark "$REPO/tests/fleet/requirements-spark.txt" "$(python_for 11)")"
    install_toktrace "$venv"
    junit="$(mktemp --suffix=.xml)"
    set +e
    "$venv/bin/python" -m pytest -q "$REPO/tests/fleet/test_spark.py" --junitxml="$junit"
    rc=$?
    set -e
    python3 "$REPO/scripts/junit_summary.py" "$junit" --set "item=$item" \
        --set "java=$(java -version 2>&1 | head -n 1 | tr -d '"')" > "$out"
    rm -f "$junit"
    return "$rc"
}
