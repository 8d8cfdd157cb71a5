#!/usr/bin/env bash
# A cached virtualenv with real SGLang running on the CPU (PyPI `sglang`).
#
# Usage: scripts/setup-sglang.sh [--version X.Y.Z] [--regen-requirements] [--pins-only]
#   stdout: the venv path (nothing else); progress goes to stderr.
#   --pins-only: write the release's requirements file if it is missing, build nothing.
#   --version: the sglang release (default 0.5.23); its pins live in
#   fixtures/sglang-cpu/X.Y.Z.txt, made on first use (scripts/pin_requirements.py).
#
# The venv lives at "${TOKTRACE_CACHE:-$HOME/.cache/toktrace}/venv-sglang-<key>",
# <key> = short hash of the python version, the pins below and the release's
# requirements file. A venv is only reused when it carries
# `.complete` (written last, after `import sglang` worked), so a half-built one
# is thrown away and rebuilt.
#
# How it installs (see fixtures/SGLANG_NOTES.md):
#   1. `pip install -r fixtures/sglang-cpu/X.Y.Z.txt`: every package
#      pinned, torch==2.14.1 from PyPI included, without the GPU kernel
#      packages of the SKIP list below.
#   2. `pip install --no-deps sglang==X.Y.Z`.
#   3. `python -c 'import sglang; ...'`, with the test-only sgl_kernel
#      stand-in (tests/engines/sgl_kernel_stub) on PYTHONPATH.
#
# There is no CPU build of `sgl_kernel` on the registries; the stand-in is
# test scaffolding, never installed into the venv: tests put it on PYTHONPATH.
#
# --regen-requirements rewrites the requirements file from the
# `Requires-Dist` lines of the sglang wheel (scripts/pin_requirements.py: markers evaluated for this
# python/platform, extras ignored, the skip list left out), resolved by pip
# without installing (`--dry-run --report`), then builds the venv from it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TOKTRACE_CACHE:-$HOME/.cache/toktrace}"
PY="${TOKTRACE_PYTHON:-python3}"
STUB="$REPO/tests/engines/sgl_kernel_stub"

VERSION="0.5.23"
PIP_PIN="pip==26.3"
# What the tests and fixtures import besides sglang.
FIXTURE_REQS=(tokenizers transformers safetensors numpy requests pytest==9.2.0)
# sglang requirements left out, "name: reason" (the reason goes into the
# requirements file as a comment). Matched on the normalised name.
SKIP=(
    "sglang-kernel: CUDA kernels (no CPU build on PyPI); tests use the stand-in in tests/engines/sgl_kernel_stub"
    "cuda-python: CUDA bindings, GPU only"
    "cuda-tile: CUDA tile kernels (a placeholder that fetches its wheel from pypi.nvidia.com)"
    "flash-attn-4: CUDA attention kernels"
    "flashinfer-python: CUDA attention/sampling kernels"
    "humming-kernels: CUDA kernels"
    "nvidia-cutlass-dsl: CUDA kernel DSL"
    "nvidia-mathdx: CUDA math library"
    "nvshmem4py-cu13: CUDA NVSHMEM"
    "quack-kernels: CUDA kernels"
    "sgl-deep-ep: CUDA expert-parallel kernels"
    "sgl-deep-gemm: CUDA GEMM kernels"
    "sgl-flash-mla: CUDA MLA kernels"
    "tilelang: GPU kernel compiler"
    "torch-memory-saver: CUDA memory release (GPU only)"
    "torchaudio: multimodal; pins a torch release of its own"
    "torchcodec: multimodal; pins a torch release of its own"
)

log() { echo "setup-sglang: $*" >&2; }

regen=0
pins_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --regen-requirements) regen=1 ;;
        --pins-only) pins_only=1 ;;
        --version) VERSION="${2:?--version needs a release, e.g. 0.5.20}"; shift ;;
        --version=*) VERSION="${1#--version=}" ;;
        -h|--help) sed -n '2,33p' "$0" >&2; exit 0 ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
    shift
done
if ! [[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+(\.post[0-9]+)?$ ]]; then
    log "not a release number: $VERSION"
    exit 2
fi
SGLANG_PIN="sglang==$VERSION"
REQS="$REPO/fixtures/sglang-cpu/$VERSION.txt"

mkdir -p "$CACHE"

regen_requirements() {
    local args=() item
    for item in "${SKIP[@]}"; do args+=(--skip "$item"); done
    for item in "${FIXTURE_REQS[@]}"; do args+=(--extra "$item"); done
    log "pinning the requirements of $SGLANG_PIN"
    # [cu13] and similar extras of its requirements only pull GPU packages.
    "$PY" "$REPO/scripts/pin_requirements.py" "$SGLANG_PIN" "$REQS" --drop-extras \
        --title "Pinned environment for SGLang on the CPU" "${args[@]}" >&2
}

if [ "$regen" = 1 ] || [ ! -f "$REQS" ]; then
    mkdir -p "$(dirname "$REQS")"
    regen_requirements
fi
[ "$pins_only" = 0 ] || exit 0
TORCH_PIN="$(grep -m1 '^torch==' "$REQS" || true)"
[ -n "$TORCH_PIN" ] || { log "$REQS pins no torch"; exit 1; }

key="$( ("$PY" --version; echo "$PIP_PIN"; echo "$SGLANG_PIN"; echo "$TORCH_PIN"; cat "$REQS") | sha256sum | cut -c1-12)"
VENV="$CACHE/venv-sglang-$key"

verify() {
    # Run from / so a checkout named sglang/ can never shadow the package; the
    # scheduler module is what imports the sgl_kernel names.
    (cd / && PYTHONPATH="$STUB" SGLANG_USE_CPU_ENGINE=1 "$VENV/bin/python" -c \
        'import sglang, sglang.srt.managers.scheduler; print(sglang.__version__)')
}

if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.complete" ]; then
    log "reusing $VENV"
    log "sglang $(verify)"
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
log "installing $SGLANG_PIN --no-deps"
"$VENV/bin/python" -m pip install --quiet --no-deps "$SGLANG_PIN" >&2
# `pip check` reports the skipped GPU packages as missing requirements of
# sglang: expected, filtered out.
"$VENV/bin/python" -m pip check 2>&1 \
    | grep -v -E '^sglang [0-9.]+(post[0-9]+)? requires ' \
    | sed 's/^/setup-sglang: pip check: /' >&2 || true
version="$(verify)"
log "sglang $version importable; built in $(( $(date +%s) - t0 )) s, $(du -sh "$VENV" | cut -f1)"
touch "$VENV/.complete"
echo "$VENV"
