# The fleet questions on Spark SQL (PySpark in local mode) against `toktrace
# fleet` (polars) over one dataset of the real-engine fixture traces: the same
# SQL files, equal answers (tests/fleet/test_spark.py). Tier 1 runs the same
# test; this suite keeps a dated result for docs/fleet.md.

SUITE_SOURCES=(tests/fleet bindings-python/python/toktrace/fleet.py bindings-python/python/toktrace/queries
               exports/src/dataset.rs viewer/src/fleet.rs fixtures/traces)

suite_items() {
    printf '%s\n' pyspark-4.3.0
}

suite_run() {
    local item="$1" out="$2"
    local venv junit rc
    ensure_java
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
