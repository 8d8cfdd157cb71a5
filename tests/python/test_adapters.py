"""Adapter dispatch without the engines installed: unknown versions are
reported once and leave the engine untraced (the real-engine behaviour is in
tests/engines/)."""

from __future__ import annotations

import types

import pytest

from toktrace import activate
from toktrace.adapters import BUILTIN
from toktrace.adapters._common import AdapterError, patch, require
from toktrace.adapters.vllm import apply as vllm_apply
from toktrace.adapters.vllm import layout_for as vllm_layout_for


def fake_engine(name: str, version: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__version__ = version
    return mod


def test_builtin_table_names_the_three_engines():
    assert set(BUILTIN) == {"vllm", "sglang", "tensorrt_llm"}


def test_vllm_releases_map_to_their_layout():
    for v in ("0.26.0", "0.27.1", "0.29.0", "0.32.0", "0.32.1+cpu", "0.33.0", "0.34.0"):
        assert vllm_layout_for(v) == "toktrace.adapters.vllm.v0_32", v
    for v in ("0.25.1", "0.24.0", "0.99.1", "garbage"):
        assert vllm_layout_for(v) is None, v


def test_unknown_vllm_version_is_refused_with_the_supported_list():
    with pytest.raises(AdapterError) as err:
        vllm_apply(fake_engine("vllm", "0.99.1"))
    assert "0.99.1" in str(err.value) and "0.26.0–0.34.x" in str(err.value)


def test_unknown_vllm_version_warns_once_through_activation(capsys, monkeypatch):
    monkeypatch.setattr(activate, "_applied", {})
    monkeypatch.setattr(activate, "_warned", set())
    mod = fake_engine("vllm", "0.99.1")
    assert activate.apply(mod, "toktrace.adapters.vllm") is False
    assert activate.apply(mod, "toktrace.adapters.vllm") is False
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "vllm 0.99.1" in err[0] and "untraced" in err[0]


def test_patch_is_idempotent_and_require_names_what_is_missing():
    class Engine:
        def step(self):
            return 1

    calls = []

    def make(orig):
        def step(self):
            calls.append(1)
            return orig(self)

        return step

    patch(Engine, "step", make)
    patch(Engine, "step", make)
    assert Engine().step() == 1 and calls == [1]
    with pytest.raises(AdapterError) as err:
        require(Engine, "step", "schedule", "update", where="Engine")
    assert "schedule, update" in str(err.value)


def test_the_structural_check_tells_ok_missing_and_changed_signatures(monkeypatch):
    import dataclasses
    import sys as _sys

    from toktrace.adapters import _common as C

    mod = types.ModuleType("fake_engine_mod")

    @dataclasses.dataclass
    class Output:
        request_id: str
        tokens: list

    class Sched:
        def schedule(self) -> None: ...
        def add(self, request_id, trace_headers=None) -> None: ...
        def add_any(self, **kwargs) -> None: ...

    mod.Output, mod.Sched = Output, Sched
    monkeypatch.setitem(_sys.modules, "fake_engine_mod", mod)
    got = {c.where.removeprefix("fake_engine_mod."): c.status for c in C.check_points([
        C.HookPoint("fake_engine_mod", "Sched", attrs=("schedule", "gone"),
                    params=(("add", ("request_id", "trace_headers", "priority")),
                            ("add_any", ("request_id",)))),
        C.HookPoint("fake_engine_mod", "Output", fields=("request_id", "logprobs")),
        C.HookPoint("fake_engine_mod", "Missing"),
        C.HookPoint("no_such_engine_module", "X"),
    ])}
    assert got == {"Sched.schedule": "ok", "Sched.gone": "missing", "Sched.add": "signature changed",
                   "Sched.add_any": "ok", "Output.request_id": "ok", "Output.logprobs": "missing",
                   "Missing": "missing", "no_such_engine_module.X": "missing"}


def test_versions_past_the_table_need_the_opt_in(monkeypatch):
    from toktrace.adapters import _common as C

    layouts = [((0, 26, 0), (0, 32, C.ANY_PATCH), "toktrace.adapters.vllm.v0_32")]
    assert C.choose_layout("vLLM", "0.29.0", layouts) == ("toktrace.adapters.vllm.v0_32", True)
    monkeypatch.delenv("TOKTRACE_ALLOW_UNTESTED", raising=False)
    for old in ("0.25.1", "garbage"):
        with pytest.raises(AdapterError, match="not a version this toktrace knows"):
            C.choose_layout("vLLM", old, layouts)
    with pytest.raises(AdapterError, match="TOKTRACE_ALLOW_UNTESTED=1"):
        C.choose_layout("vLLM", "0.35.0", layouts)
    assert C.ranges_text(layouts) == "0.26.0–0.32.x"


def test_a_patcher_that_raises_anything_leaves_the_engine_untraced_not_broken(capsys, monkeypatch):
    # A hook that runs during the engine's own import must never raise into
    # it: an ImportError (say, a module an older release lacks) is one warning.
    from toktrace.adapters import _common as C

    monkeypatch.setattr(activate, "_warned", set())

    def patcher(module):
        raise ImportError("cannot import name 'runtime_context'")

    run = C.checked("sglang", "0.5.13", patcher)
    run(types.ModuleType("sglang.srt.managers.scheduler"))
    run(types.ModuleType("sglang.srt.managers.scheduler"))
    err = capsys.readouterr().err
    assert err.count("toktrace:") == 1
    assert "sglang 0.5.13 failed: ImportError: cannot import name 'runtime_context'; sglang runs untraced" in err
