# A real vllm serve under long load, killed many times, out of disk; a probe driver killed hundreds of times.
# The same tests as Tier 1 (tests/engines/test_vllm_faults.py,
# tests/python/test_kill_probe.py), run longer: a 30-minute soak of 12
# streaming clients with a small ring and rotating segments, exact token
# accounting at the end; six SIGKILLs of the server's processes (engine
# core, API server, both, twice each) mid-stream; the trace directory on a
# tmpfs that fills and is freed while clients stream; 200 SIGKILLs of a
# Python process driving the probe. Each item keeps the figures its tests
# report (clients, tokens/s, drops, tokens lost per kill) for
# docs/reliability.md.

SUITE_SOURCES=(tests/engines/test_vllm_faults.py tests/engines/served.py tests/python/test_kill_probe.py
               tests/trace_tokens.py scripts/setup-vllm.sh fixtures/vllm-cpu fixtures/tiny-llama)

VLLM_RELEASE=0.32.0

suite_items() {
    printf '%s\n' soak-30min kills-6 disk-full probe-kills-200
}

suite_run() {
    local item="$1" out="$2"
    local venv tests junit figures rc
    case "$item" in
        probe-kills-*)
            venv="$(venv_for test-py311 "$REPO/tests/requirements.txt" "$(python_for 11)")"
            tests=("$REPO/tests/python/test_kill_probe.py")
            export TOKTRACE_PROBE_KILLS="${item#probe-kills-}"
            ;;
        *)
            venv="$(bash "$REPO/scripts/setup-vllm.sh" --version "$VLLM_RELEASE")"
            "$venv/bin/python" -m pytest --version >/dev/null 2>&1 || "$venv/bin/pip" install --quiet "pytest==9.2.0"
            case "$item" in
                soak-*) local minutes="${item#soak-}"
                        tests=("$REPO/tests/engines/test_vllm_faults.py" -k under_load)
                        export TOKTRACE_SOAK_SECONDS=$(( ${minutes%min} * 60 )) ;;
                kills-*) tests=("$REPO/tests/engines/test_vllm_faults.py" -k after_each_kill)
                         export TOKTRACE_KILLS="${item#kills-}" ;;
                disk-full) tests=("$REPO/tests/engines/test_vllm_faults.py" -k full_disk) ;;
            esac
            ;;
    esac
    install_toktrace "$venv"
    junit="$(mktemp --suffix=.xml)"
    figures="$(mktemp --suffix=.jsonl)"
    set +e
    TOKTRACE_FIGURES="$figures" "$venv/bin/python" -m pytest -q -s "${tests[@]}" --junitxml="$junit"
    rc=$?
    set -e
    python3 "$REPO/scripts/junit_summary.py" "$junit" --set "item=$item" > "$out.tests"
    python3 - "$out.tests" "$figures" > "$out" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
data["figures"] = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
json.dump(data, sys.stdout, indent=1)
EOF
    rm -f "$junit" "$figures" "$out.tests"
    return "$rc"
}
