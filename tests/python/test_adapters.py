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
    for v in ("0.26.0", "0.27.1", "0.29.0", "0.32.0", "0.32.1+cpu"):
        assert vllm_layout_for(v) == "toktrace.adapters.vllm.v0_32", v
    for v in ("0.25.1", "0.24.0", "0.99.1", "garbage"):
        assert vllm_layout_for(v) is None, v


def test_unknown_vllm_version_is_refused_with_the_supported_list():
    with pytest.raises(AdapterError) as err:
        vllm_apply(fake_engine("vllm", "0.99.1"))
    assert "0.99.1" in str(err.value) and "0.26.0–0.32.x" in str(err.value)


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
