# The fleet dataset at scale: ~100 M tokens over 51 captures on 11 hosts —
# bytes per token, export times (first and periodic), each named question in
# `toktrace fleet` (polars) and DuckDB (benches/fleet_scale.py).

SUITE_SOURCES=(benches/fleet_scale.py exports/src/dataset.rs viewer/src/fleet.rs viewer/src/export.rs
               bindings-python/python/toktrace/fleet.py bindings-python/python/toktrace/queries
               analyzer/src/frames.rs workload/src)

suite_items() {
    printf '%s\n' 100M-tokens
}

suite_run() {
    local item="$1" out="$2"
    local venv work
    cargo build --release --locked -p toktrace-viewer -p toktrace-workload >&2
    venv="$(venv_for "test-py311" "$REPO/tests/requirements.txt" "$(python_for 11)")"
    install_toktrace "$venv"
    work="$CACHE/fleet-scale"
    "$venv/bin/python" "$REPO/benches/fleet_scale.py" --out "$work" \
        --captures 50 --tokens-per-capture 2000000 > "$out"
    rm -rf "$work"
}
