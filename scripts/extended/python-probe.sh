# The probe's Python-level cost per step (benches/python_probe.py) on each CPython, objects read directly and through the C API.
# Diagnostics beside the in-situ figures: what a step costs the calling
# thread, by batch size and shape, against a no-op call and the
# OpenTelemetry SDK; and what the sealed direct reads save on each
# interpreter (the risk they add must pay for itself).

SUITE_SOURCES=(benches/python_probe.py tests/requirements.txt)

suite_items() {
    local minor
    for minor in 11 12 13; do
        echo "cpython3.$minor-direct"
        echo "cpython3.$minor-c-api"
    done
}

suite_run() {
    local item="$1" out="$2"
    local minor="${item#cpython3.}"
    minor="${minor%%-*}"
    local py venv
    py="$(python_for "$minor")"
    venv="$(venv_for "test-py3$minor" "$REPO/tests/requirements.txt" "$py")"
    install_toktrace "$venv"
    if [ "${item##*-}" = "api" ]; then
        TOKTRACE_DIRECT_READS=0 "$venv/bin/python" "$REPO/benches/python_probe.py" --json "$out"
    else
        "$venv/bin/python" "$REPO/benches/python_probe.py" --json "$out"
    fi
}
