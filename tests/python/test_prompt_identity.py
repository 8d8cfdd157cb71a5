"""The prompt's identity and the top-K sampling choice, as the adapters call
them: one hash for the same ids in any container, the same choice in every
process, and arrivals that carry both (format 2) or neither."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import records
from toktrace._native import NativeProbe, prompt_hash, topk_sampled


def test_same_ids_same_hash_whatever_holds_them() -> None:
    ids = [1, 2, 3, 50_000]
    h = prompt_hash(ids)
    assert h == prompt_hash(tuple(ids)) == prompt_hash(np.array(ids, dtype=np.int64))
    assert h != prompt_hash([3, 2, 1, 50_000])
    assert prompt_hash([]) == 0xCBF29CE484222325  # FNV-1a's offset basis: nothing folded in
    # Not token ids: no hash, never an exception into the engine.
    assert prompt_hash([1, -2]) is None
    assert prompt_hash(["a"]) is None


def test_the_choice_is_the_same_in_another_process() -> None:
    hashes = [prompt_hash([7, i]) for i in range(200)]
    here = [topk_sampled(h, 0.3) for h in hashes]
    code = ("import sys; from toktrace._native import prompt_hash, topk_sampled; "
            "print(''.join('1' if topk_sampled(prompt_hash([7, i]), 0.3) else '0' for i in range(200)))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert there == "".join("1" if c else "0" for c in here)
    assert 30 < sum(here) < 90
    assert not any(topk_sampled(h, 0.0) for h in hashes) and all(topk_sampled(h, 1.0) for h in hashes)


def test_arrivals_carry_the_identity_when_given(tmp_path: Path) -> None:
    probe = NativeProbe(str(tmp_path))
    h = prompt_hash([4, 5, 6])
    assert probe.record_arrivals([
        ("old", None, None, 3, None, None, None, None, None, None, None),
        ("new", None, None, 3, 0.0, None, None, None, None, None, None, h, 5),
    ]) == 2
    with pytest.raises(ValueError, match="11 or 13 fields"):
        probe.record_arrivals([("bad", None, None, 3, None, None, None, None, None, None, None, h)])
    assert probe.shutdown(5.0)
    got = {a["internal_id"]: a for a in records(tmp_path, "Arrival")}
    assert (got["old"]["prompt_hash"], got["old"]["trace_top_k"]) == (None, None)
    assert (got["new"]["prompt_hash"], got["new"]["trace_top_k"]) == (h, 5)
    assert got["new"]["params"]["logprobs"] is None


def test_which_requests_the_adapters_ask_topk_for() -> None:
    from types import SimpleNamespace

    from toktrace.adapters import _common as C
    from toktrace.config import Config

    def rec(**cfg: object) -> SimpleNamespace:
        return SimpleNamespace(config=Config(dir="/t", **cfg))

    ids = [11, 12, 13]
    h = prompt_hash(ids)
    C.verdicts["testengine"] = {"layout": "x", "engine_version_tested": "yes"}
    try:
        on = rec(topk_sample=1.0)
        assert C.prompt_identity(on, "testengine", ids, None, None) == (h, 5)
        assert C.prompt_identity(on, "testengine", ids, 2, None) == (h, 5)  # fewer than K: raised
        assert C.prompt_identity(on, "testengine", ids, 5, None) == (h, None)  # as many: left alone
        assert C.prompt_identity(on, "testengine", ids, -1, None) == (h, None)  # all: left alone
        assert C.prompt_identity(on, "testengine", ids, None, 3) == (h, 3)  # the engine's limit
        assert C.prompt_identity(rec(topk_sample=1.0, sample_top_k=8), "testengine", ids, None, None) == (h, 8)
        assert C.prompt_identity(rec(), "testengine", ids, None, None) == (h, None)  # off
        assert C.prompt_identity(rec(topk_sample=1.0, capture="metadata"), "testengine", ids, None, None) == (h, None)
        assert C.prompt_identity(on, "testengine", None, None, None) == (None, None)  # no ids: no hash
    finally:
        del C.verdicts["testengine"]
