# Shared set-up for toktrace's scripts: caches outside the clone, stage timing.
# Sourced, not run.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Everything slow to rebuild lives outside the clone, so a fresh clone (CI)
# reuses it: one cargo target dir for cargo and maturin, and the virtualenvs.
CACHE="${TOKTRACE_CACHE:-$HOME/.cache/toktrace}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CACHE"

STAGE_NAME=""
STAGE_START=0
stage() {
    stage_end
    STAGE_NAME="$1"
    STAGE_START=$(date +%s)
    echo "==> $STAGE_NAME"
}
stage_end() {
    if [ -n "$STAGE_NAME" ]; then
        echo "==> $STAGE_NAME: $(( $(date +%s) - STAGE_START )) s"
        STAGE_NAME=""
    fi
}

# A virtualenv keyed by the hash of what goes into it: changing a requirement
# or the interpreter makes a new one, an unchanged one is reused as is.
#   venv_for NAME REQUIREMENTS_FILE [PYTHON]  -> prints the venv path
venv_for() {
    local name="$1" reqs="$2" py="${3:-python3}"
    local key
    key="$( ("$py" --version; cat "$reqs") | sha256sum | cut -c1-12)"
    local dir="$CACHE/venv-$name-$key"
    if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir"
        "$py" -m venv "$dir" >&2
        "$dir/bin/pip" install --quiet --upgrade pip >&2
        "$dir/bin/pip" install --quiet -r "$reqs" >&2
        touch "$dir/.complete"
    fi
    echo "$dir"
}

# The interpreter of CPython 3.MINOR: python3.MINOR on PATH if it runs (a
# pyenv shim refuses when another version is selected), else the newest pyenv
# build of it (these machines have 3.11, 3.12 and 3.13 under pyenv).
#   python_for MINOR  -> prints its path
python_for() {
    local minor="$1" root candidate
    root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    for candidate in "$(command -v "python3.$minor" 2>/dev/null || true)" \
        $(ls -d "$root"/versions/3."$minor".*/bin/python 2>/dev/null | sort -rV); do
        if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, '"$minor"')' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "no CPython 3.$minor found (looked for python3.$minor on PATH and under pyenv)" >&2
    return 1
}

# Debian's chromium, which the HTML-report test renders pages with, and tmux,
# the real terminal the viewer's end-to-end test and the README's screen run in.
ensure_chromium() {
    local missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v tmux >/dev/null 2>&1 || missing+=(tmux)
    [ ${#missing[@]} -gt 0 ] || return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Java 17 or later for PySpark (Debian's openjdk-17-jre-headless when missing).
ensure_java() {
    if java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then
        return 0
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >&2
}

# Prometheus for the live test: Debian's package (the binary only is used;
# the test starts it with its own configuration and data directory).
ensure_prometheus() {
    if command -v prometheus >/dev/null 2>&1; then
        return 0
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq --no-install-recommends prometheus >&2
}

# Build the toktrace wheel (probe extension + bundled CLI) once per source
# state, into the cache; prints the wheel's path.
build_wheel() {
    local stamp
    stamp="$(cd "$REPO" && git ls-files -s bindings-python engine-adapters probe-core viewer analyzer exports workload Cargo.toml Cargo.lock 2>/dev/null | sha256sum | cut -c1-16)"
    if ! git -C "$REPO" diff --quiet HEAD -- bindings-python engine-adapters probe-core viewer analyzer exports workload 2>/dev/null; then
        stamp="$stamp-dirty-$(date +%s)"
    fi
    local dir="$CACHE/wheels/$stamp"
    if ! ls "$dir"/toktrace-*.whl >/dev/null 2>&1; then
        local builder
        builder="$(venv_for build "$REPO/scripts/build-requirements.txt")"
        rm -rf "$dir" && mkdir -p "$dir"
        "$builder/bin/pip" wheel --quiet --no-deps --wheel-dir "$dir" "$REPO/bindings-python" >&2
    fi
    ls "$dir"/toktrace-*.whl | head -n 1
}

# Install the current toktrace wheel into a venv (reinstalled only when it changed).
install_toktrace() {
    local venv="$1" wheel
    wheel="$(build_wheel)"
    if [ "$(cat "$venv/.toktrace-wheel" 2>/dev/null)" != "$wheel" ]; then
        "$venv/bin/pip" install --quiet --force-reinstall --no-deps "$wheel"
        echo "$wheel" > "$venv/.toktrace-wheel"
    fi
}
