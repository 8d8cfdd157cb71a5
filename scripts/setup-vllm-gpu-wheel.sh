#!/usr/bin/env bash
# A cached virtualenv with a GPU-only vLLM release (PyPI `vllm`, no CPU wheel
# exists for it) for the scheduler-level harness (tests/engines/vllm_harness).
#
# Usage: scripts/setup-vllm-gpu-wheel.sh --version X.Y.Z [--regen-requirements]
#   stdout: the venv path (nothing else); progress goes to stderr.
#   --version: the vllm release (default 0.34.0); its pins are in
#   fixtures/vllm-gpu-wheel/X.Y.Z.txt, made on first use.
#
# The venv lives at "${TOKTRACE_CACHE:-$HOME/.cache/toktrace}/venv-vllmgpu-<key>",
# <key> = short hash of the python version, the pins below and the release's
# requirements file. A venv is only reused when it carries `.complete`
# (written last, after `import vllm` worked), so a half-built one is thrown
# away and rebuilt.
#
# How it installs:
#   1. `pip install -r fixtures/vllm-gpu-wheel/X.Y.Z.txt`: every package
#      pinned, the torch release the wheel pins (PyPI's build, whose CUDA
#      runtime libraries `nvidia-*` come along as torch's own requirements:
#      `import torch` preloads them, GPU or not), pytest, without the GPU
#      kernel packages of the SKIP list below.
#   2. `pip install --no-deps vllm==X.Y.Z`.
#   3. `python -c 'import vllm; ...'`. No VLLM_TARGET_DEVICE is needed for
#      the import: vLLM picks its platform lazily, on first use of
#      `vllm.platforms.current_platform`.
#   4. The harness's test-only platform plugin
#      (tests/engines/vllm_harness/platform_plugin), reinstalled whenever its
#      sources change (a stamp file in the venv), so editing it never forces
#      a rebuild of the venv.
#
# --regen-requirements rewrites the requirements file from the
# `Requires-Dist` lines of the vllm wheel (scripts/pin_requirements.py: markers evaluated for
# this python/platform, extras ignored, the skip list left out), resolved by
# pip without installing (`--dry-run --report`), then builds the venv from
# the new file.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TOKTRACE_CACHE:-$HOME/.cache/toktrace}"
PY="${TOKTRACE_PYTHON:-python3}"
VERSION="0.34.0"
PIP_PIN="pip==26.3"
PLUGIN="$REPO/tests/engines/vllm_harness/platform_plugin"
# What the harness and its tests import besides vllm and its requirements.
FIXTURE_REQS=(tokenizers transformers safetensors numpy pytest==9.2.0)
# vllm requirements left out, "name: reason" (the reason goes into the
# requirements file as a comment). Matched on the normalised name. The
# harness never runs a kernel: the model runner is stood in.
SKIP=(
    "flashinfer-python: CUDA attention/sampling kernels (JIT-compiled with nvcc)"
    "nvidia-cudnn-frontend: cuDNN graph API, GPU only"
    "nvidia-cutlass-dsl: CUDA kernel DSL"
    "quack-kernels: CUDA kernels (needs nvidia-cutlass-dsl)"
    "tokenspeed-mla: CUDA MLA kernels"
    "humming-kernels: CUDA kernels"
    "tilelang: GPU kernel compiler"
    "pynvvideocodec: NVDEC/NVENC video decoding, GPU only"
    "fastsafetensors: GPU-direct weight loading; the harness loads no weights"
    "instanttensor: GPU weight loading; the harness loads no weights"
    "apache-tvm-ffi: pinned for flashinfer/tilelang (skipped above); another release comes in if a kept package needs one"
    "deep-gemm: CUDA GEMM kernels"
    "xformers: CUDA attention kernels"
    "triton-kernels: GPU kernels"
)

log() { echo "setup-vllm-gpu-wheel: $*" >&2; }

regen=0
while [ $# -gt 0 ]; do
    case "$1" in
        --regen-requirements) regen=1 ;;
        --version) VERSION="${2:?--version needs a release, e.g. 0.34.0}"; shift ;;
        --version=*) VERSION="${1#--version=}" ;;
        -h|--help) sed -n '2,35p' "$0" >&2; exit 0 ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
    shift
done
if ! [[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+(\.post[0-9]+)?$ ]]; then
    log "not a release number: $VERSION"
    exit 2
fi
VLLM_PIN="vllm==$VERSION"
REQS="$REPO/fixtures/vllm-gpu-wheel/$VERSION.txt"

mkdir -p "$CACHE"

regen_requirements() {
    local args=() item
    for item in "${SKIP[@]}"; do args+=(--skip "$item"); done
    for item in "${FIXTURE_REQS[@]}"; do args+=(--extra "$item"); done
    log "pinning the requirements of $VLLM_PIN"
    "$PY" "$REPO/scripts/pin_requirements.py" "$VLLM_PIN" "$REQS" \
        --title "Pinned environment for the vLLM scheduler-level harness" \
        --note "nvidia-* runtime libraries below are torch's own requirements (PyPI's torch" \
        --note "preloads them at import), not vllm's." "${args[@]}" >&2
}

if [ "$regen" = 1 ] || [ ! -f "$REQS" ]; then
    mkdir -p "$(dirname "$REQS")"
    regen_requirements
fi
TORCH_PIN="$(grep -m1 '^torch==' "$REQS" || true)"
[ -n "$TORCH_PIN" ] || { log "$REQS pins no torch"; exit 1; }

key="$( ("$PY" --version; echo "$PIP_PIN"; echo "$VLLM_PIN"; cat "$REQS") | sha256sum | cut -c1-12)"
VENV="$CACHE/venv-vllmgpu-$key"

verify() {
    # Run from / so a checkout named vllm/ can never shadow the package.
    (cd / && "$VENV/bin/python" -c 'import vllm; print(vllm.__version__)')
}

install_plugin() {
    local stamp
    stamp="$(cd "$PLUGIN" && find . -type f \( -name '*.py' -o -name '*.toml' \) -print0 | sort -z \
        | xargs -0 sha256sum | sha256sum | cut -c1-16)"
    if [ "$(cat "$VENV/.harness-plugin" 2>/dev/null)" != "$stamp" ]; then
        log "installing the harness platform plugin"
        # A copy, so the build leaves nothing (build/, *.egg-info) in the checkout.
        local tmp
        tmp="$(mktemp -d)"
        cp -r "$PLUGIN/." "$tmp/"
        "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall "$tmp" >&2
        rm -rf "$tmp"
        echo "$stamp" > "$VENV/.harness-plugin"
    fi
}

if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.complete" ]; then
    log "reusing $VENV"
    install_plugin
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
# `pip check` names the skipped packages (missing, or another release of
# one a kept package brought in): expected, filtered out.
skipped_re="$(printf '%s\n' "${SKIP[@]}" | cut -d: -f1 | paste -sd'|')"
"$VENV/bin/python" -m pip check 2>&1 \
    | grep -v -i -E "^vllm [0-9.]+ (requires|has requirement) ($skipped_re)[^a-z0-9-]" \
    | sed 's/^/setup-vllm-gpu-wheel: pip check: /' >&2 || true
install_plugin
version="$(verify)"
log "vllm $version importable; built in $(( $(date +%s) - t0 )) s, $(du -sh "$VENV" | cut -f1)"
touch "$VENV/.complete"
echo "$VENV"
