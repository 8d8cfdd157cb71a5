"""The SGLang layout's release shims and its bookkeeping of requests that
leave without a batch, on stand-in objects (the real-engine proof is
tests/engines/test_sglang.py, run on each release by the compatibility suite)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from toktrace.adapters.sglang import layout_for
from toktrace.adapters.sglang import v0_5_23 as layout


class FakeRecorder:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str, int]] = []
        self.steps: list[dict[str, Any]] = []

    def finishes(self, rows: list[tuple[str, str, int]]) -> None:
        self.finished.extend(rows)

    def step(self, *args: Any, **kwargs: Any) -> None:
        self.steps.append({"ids": args[2], **kwargs})


class FakeReq:
    def __init__(self, rid: str, outputs: int) -> None:
        self.rid = rid
        self.output_ids = list(range(outputs))
        self.return_logprob = False

    def finished(self) -> bool:
        return False


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> tuple[layout._SchedState, FakeRecorder]:
    rec = FakeRecorder()
    st = layout._SchedState(None)
    st.live.update({"a": 10, "b": 10})
    monkeypatch.setattr(layout, "_recorder", lambda: rec)
    monkeypatch.setattr(layout, "_current_state", st)
    return st, rec


def test_every_release_from_0_5_13_to_0_5_23_has_the_layout() -> None:
    for patch in range(13, 24):
        assert layout_for(f"0.5.{patch}") == "toktrace.adapters.sglang.v0_5_23", patch
    assert layout_for("0.5.12") is None
    assert layout_for("0.5.24") is None


def test_hook_points_follow_the_release() -> None:
    def where(version: str) -> set[str]:
        return {f"{p.module}.{p.owner}" + "".join(f".{a}" for a in p.attrs if a == "_release_aborted_request")
                for p in layout.hook_points(version)}

    old, new = where("0.5.20"), where("0.5.21")
    # Up to 0.5.20: ranks on Scheduler.ps, unrun aborts seen at send_output.
    assert "sglang.srt.managers.scheduler_components.output_sender.SenderWrapper" in old
    assert not any("runtime_context" in w or "_release_aborted_request" in w for w in old)
    # From 0.5.21: get_parallel() and _release_aborted_request.
    assert "sglang.srt.runtime_context.get_parallel" in new
    assert "sglang.srt.managers.scheduler.Scheduler._release_aborted_request" in new
    assert not any("SenderWrapper" in w for w in new)


def test_ranks_come_from_ps_before_0_5_21(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "_pre_0_5_21", True)
    ps = SimpleNamespace(pp_rank=0, attn_tp_rank=0, attn_cp_rank=0, dp_rank=1)
    assert layout._records_here(SimpleNamespace(ps=ps)) == (True, 1)
    ps.attn_tp_rank = 1
    assert layout._records_here(SimpleNamespace(ps=ps))[0] is False


def test_a_request_aborted_by_retraction_finishes_there(state: tuple) -> None:
    st, rec = state
    wrapped = layout._wrap_retract_decode(lambda batch: ([], 0.5, [FakeReq("a", 7)]))
    wrapped(object())
    assert rec.finished == [("a", "abort", 7)]
    assert "a" not in st.live
    # Told again (0.5.13–0.5.20 also send its AbortReq): nothing more.
    layout._left_unrun(st, FakeReq("a", 7), "test")
    assert rec.finished == [("a", "abort", 7)]


def test_an_abort_while_its_batch_is_in_flight_waits_for_that_batch(state: tuple) -> None:
    st, rec = state
    req = FakeReq("b", 3)
    launch = (0, 1, (["b"], [0], [1], None, [req]), 0, 1, None, None)
    result = object()
    st.pending[id(result)] = (result, launch, object())
    layout._wrap_retract_decode(lambda batch: ([], 0.5, [req]))(object())
    layout._left_unrun(st, req, "SenderWrapper.send_output")  # the AbortReq, right after
    assert rec.finished == [] and "b" in st.live
    # The in-flight batch's result: its token is recorded, then the finish.
    st.pending.clear()
    req.output_ids.append(99)
    layout._record(rec, st, launch, [(3, 0)], end_ns=2)
    assert rec.steps[0]["ids"] == ["b"]
    assert rec.finished == [("b", "abort", 4)]
    assert "b" not in st.live and not st.abort_after


def test_results_pair_with_their_launch_and_by_micro_batch_only_when_pipelined() -> None:
    st = layout._SchedState(None)
    running, other = object(), object()
    r1, r2 = object(), object()
    st.pending[id(r1)] = (r1, "launch 1", running)
    st.pending[id(r2)] = (r2, "launch 2", running)
    # The very result object: its own launch, whatever the order.
    assert layout._launch_of(st, running, r2)[1] == "launch 2"
    # A result never launched as recorded (an idle batch): nothing, even
    # though the running batch object has a launch pending.
    assert layout._launch_of(st, running, object()) is None
    assert list(st.pending) == [id(r1)]
    # Pipeline parallelism: the last stage builds a new result object; the
    # micro-batch's oldest launch is its launch.
    st.pipelined = True
    st.pending[id(r2)] = (r2, "launch 3", other)
    assert layout._launch_of(st, other, object())[1] == "launch 3"
    assert layout._launch_of(st, running, object())[1] == "launch 1"
    assert not st.pending
