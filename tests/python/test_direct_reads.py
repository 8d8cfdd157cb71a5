"""The probe reads lists, ints, floats, dicts and numpy arrays straight from
memory (bindings-python/src/layout.rs) on the CPython versions whose layouts
it has sealed, once a check at start-up shows they match; everything else —
other versions, free-threaded builds, `TOKTRACE_DIRECT_READS=0` — goes
through the C API. Either way a column must come back exactly as given:
these cases sit on the borders between the two paths, and CI runs this file
on 3.11, 3.12 and 3.13 with direct reads on and off."""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import clean_env, dump, records, run_py
from toktrace._native import NativeProbe, direct_reads, monotonic_ns

READERS = ("lists", "ints", "floats", "dicts", "numpy")
SWITCHED_OFF = os.environ.get("TOKTRACE_DIRECT_READS", "").strip().lower() in {"0", "off", "false", "no"}


def flatten(column) -> list:
    """A column's values as the probe should read them: one level of nesting flattened."""
    if isinstance(column, np.ndarray):
        return np.asarray(column).ravel().tolist()
    return [x for item in column for x in (item if isinstance(item, list) else [item])]


def round_trip(tmp_path: Path, ids, logprobs=None) -> dict:
    """Record one request's run of all of `ids`; return the step's tokens."""
    n = len(flatten(ids))
    probe = NativeProbe(str(tmp_path))
    extra = {}
    if logprobs is not None:
        extra = dict(top_k=0, logprobs=logprobs, ranks=[1] * n)
    assert probe.record_step(1, monotonic_ns(), ["r"], [0], [n], None, [0],
                             token_ids=ids, run_counts=[n], **extra)
    assert probe.shutdown(10.0)
    [step] = records(tmp_path, "Step")
    return step["tokens"]


def test_this_interpreter_takes_the_path_it_should(tmp_path: Path):
    # Recording one numpy column teaches the probe numpy's layout.
    round_trip(tmp_path, np.arange(3))
    report = direct_reads()
    if SWITCHED_OFF:
        assert report["path"] == "c-api"
        assert report["why"] == f"TOKTRACE_DIRECT_READS={os.environ['TOKTRACE_DIRECT_READS']}"
        assert not any(report[r] for r in READERS)
    else:
        assert report["path"] == "direct"
        assert report["why"] == f"CPython 3.{sys.version_info.minor} layout (sealed)"
        assert all(report[r] for r in READERS)


# One process records steps of every shape the adapters hand over (vLLM's
# dicts and nested lists with numpy candidates, flat and nested lists, tuples,
# numpy scalars, a dict subclass, ints past one digit) and prints the path it
# took. `PRELUDE` stands in for another interpreter before the probe loads.
RECORD_SHAPES = """
import json, sys
from collections import OrderedDict
import numpy as np
from toktrace._native import NativeProbe, direct_reads

class Flag:
    pass

probe = NativeProbe(sys.argv[1] if len(sys.argv) > 1 else TRACE)
rng = np.random.default_rng(3)
reqs = [f"req-{i}" for i in range(40)]
probe.record_arrivals([(r, r + "-ext", None, 7 + i, 0.5, 1.0, -1, 32, 5 if i % 2 else None, None, 1000 + i)
                       for i, r in enumerate(reqs)])
ids = rng.integers(0, 150_000, size=(40, 6), dtype=np.int64)
lps = (-np.sort(rng.random((40, 6), dtype=np.float32), axis=1) * 10)
rows = {r: i for i, r in enumerate(reversed(reqs))}
scheduled = {r: 1 + (i % 3 == 0) * (2**31 + i) % 50 for i, r in enumerate(reqs)}
for step in range(6):
    kw = dict(cached=None, waiting=3, running=40, kv_usage=0.25, preempted=None, finished=None)
    if step % 3 == 0:   # vLLM's shape
        probe.record_step(step, 10_000 + step, reqs, None, None, None, None,
                          token_ids=[[int(x)] for x in ids[:, step % 6]], scheduled=scheduled,
                          computed=[7 + i for i in range(40)], top_k=5, top_ids=ids, top_logprobs=lps,
                          ranks=np.arange(40) % 4 + 1, sampled_first=True, logprob_rows=rows,
                          run_has_logprobs=[Flag() if i % 2 else None for i in range(40)],
                          end_ns=20_000 + step, **kw)
    elif step % 3 == 1:  # flat and nested lists, a tuple, numpy scalars, a dict subclass
        probe.record_step(step, 10_000 + step, tuple(reqs), [0] * 40, [1] * 40, None, None,
                          token_ids=[np.int64(x) if i % 7 == 0 else int(x) for i, x in enumerate(ids[:, 1])],
                          top_k=5, logprobs=lps[:, 0].tolist(), ranks=tuple(range(1, 41)),
                          top_ids=ids[:, 1:].tolist(), top_logprobs=lps[:, 1:].ravel().tolist(),
                          end_ns=20_000 + step, **kw)
    else:
        probe.record_step(step, 10_000 + step, reqs, None, None, None, None,
                          token_ids=[[2**30 + i, 2**31 + i] for i in range(40)],
                          scheduled=OrderedDict(scheduled), computed=[9] * 40,
                          run_counts=[2] * 40, end_ns=20_000 + step, **kw)
probe.record_finishes([(r, "stop", 12) for r in reqs[:5]])
assert probe.shutdown(10.0)
print(json.dumps(direct_reads()))
"""

STAND_INS = {
    "this interpreter": ("", {}),
    "switched off": ("", {"TOKTRACE_DIRECT_READS": "0"}),
    "GIL off at run time": ("import sys; sys._is_gil_enabled = lambda: False\n", {}),
    "free-threaded build": ("import sys; sys.abiflags = 't'\n", {}),
    # A start-up check that raises leaves the C API too; the module still loads.
    "a check that raises": ("import sys; sys._is_gil_enabled = lambda: 1 / 0\n", {}),
}


def recorded(tmp_path: Path, name: str) -> tuple[dict, list[dict]]:
    prelude, env = STAND_INS[name]
    trace = tmp_path / name.replace(" ", "-")
    proc = run_py(f"TRACE = {str(trace)!r}\n" + prelude + RECORD_SHAPES, clean_env(**env))
    report = json.loads(proc.stdout.splitlines()[-1])
    kept = [r["record"] for r in dump(trace) if {"Step", "Arrival", "Finish"} & r["record"].keys()]
    for r in kept:
        r.get("Finish", {}).pop("time_ns", None)  # read from the clock at the call
    return report, kept


@pytest.mark.parametrize("name", [n for n in STAND_INS if n != "this interpreter"])
def test_every_other_path_is_the_c_api_with_the_same_records(tmp_path: Path, name: str):
    direct, want = recorded(tmp_path, "this interpreter")
    assert direct["path"] == "direct"
    report, got = recorded(tmp_path, name)
    assert report["path"] == "c-api"
    assert not any(report[r] for r in READERS)
    expected_why = {"switched off": "TOKTRACE_DIRECT_READS=0", "GIL off at run time": "free-threaded",
                    "free-threaded build": "free-threaded",
                    "a check that raises": "a start-up check failed: ZeroDivisionError"}[name]
    assert expected_why in report["why"]
    assert len(want) == 6 + 40 + 5
    assert got == want


def test_the_process_record_says_which_path_ran(tmp_path: Path):
    for name, want in [("this interpreter", "direct: CPython 3."), ("switched off", "c-api: TOKTRACE_DIRECT_READS=0")]:
        prelude, env = STAND_INS[name]
        trace = tmp_path / name.replace(" ", "-")
        run_py(f"""{prelude}
from toktrace._native import NativeProbe
p = NativeProbe({str(trace)!r})
p.record_process("vllm", "0.32.0")
assert p.shutdown(10.0)
""", clean_env(**env))
        [info] = records(trace, "Process")
        assert dict(info["extra"])["direct_reads"].startswith(want), info["extra"]


INT_CASES = {
    "digit borders": [0, 1, 7, 255, 2**30 - 1, 2**30, 2**31, 2**32 - 1],
    "bools and an IntEnum": [True, False, enum.IntEnum("E", "A B")(2)],
    "numpy scalars in a list": [np.int64(5), 6, np.uint32(7)],
    "nested": [[1, 2], [3], [], [2**30 + 1]],
    "nested then flat": [[1], 2, [3, 4]],
    "nested, a numpy scalar inside": [[1], [np.int64(2), 3]],
    # More values than lists: the reserved space has to grow mid-column.
    "nested, many values per list": [[i, i + 1, i + 2, i + 3] for i in range(300)],
    "a tuple": (9, 8, 7),
    # Repeated objects take the previous item's value: small ints are shared,
    # and a literal repeated in one list is one constant.
    "repeated objects": [1, 1, 1, 7, 7, 300000, 300000, 0, 300001],
}


@pytest.mark.parametrize("case", list(INT_CASES))
def test_int_columns_come_back_exactly(tmp_path: Path, case: str):
    given = INT_CASES[case]
    assert round_trip(tmp_path, given)["ids"] == [int(x) for x in flatten(given)]


@pytest.mark.parametrize("bad", [[-1], [2**32], [2**61], [2**100], [1, -(2**40)], [1.5], ["7"],
                                 [5, 2**32, 2**32]])
def test_out_of_range_or_non_numbers_are_refused(tmp_path: Path, bad):
    probe = NativeProbe(str(tmp_path))
    with pytest.raises((ValueError, TypeError)):
        probe.record_step(1, monotonic_ns(), ["r"], [0], [1], None, [0], token_ids=bad, run_counts=[1])
    probe.shutdown(1.0)


def test_float_columns_take_ints_floats_and_numpy_scalars(tmp_path: Path):
    given = [-0.5, 0, -3, np.float32(-1.25), -1e-7, float(-2**40)]
    t = round_trip(tmp_path, [1] * len(given), logprobs=given)
    np.testing.assert_array_equal(np.float32(t["logprobs"]), np.float32([float(x) for x in given]))


base = np.arange(2, 38, dtype=np.int64).reshape(6, 6)
ARRAY_CASES = {
    "strided column": base[:, 0],
    "reversed": base[::-1, 2],
    "2-D every other column": base[:, ::2],
    "2-D rows of five": base[:, 1:],
    "2-D rows of five, last first": base[::-1, 1:],
    "3-D": base.reshape(3, 2, 6)[:, :, 1:],
    "Fortran order": np.asfortranarray(base[:3, :4]),
    "big-endian": base[:, 1].astype(">i8"),
    "int32": base[1].astype(np.int32),
    "uint16": base[2].astype(np.uint16),
    "bool": np.array([True, False, True]),
    "0-d": np.array(11),
    "subclass": base[0].view(type("Sub", (np.ndarray,), {})),
    "empty": np.zeros((0, 5), dtype=np.int64),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_numpy_arrays_of_any_layout_come_back_in_c_order(tmp_path: Path, case: str):
    arr = ARRAY_CASES[case]
    if arr.size == 0:
        probe = NativeProbe(str(tmp_path))
        assert probe.record_step(1, monotonic_ns(), ["r"], [0], [0], None, [0], token_ids=arr, run_counts=[0])
        probe.shutdown(1.0)
        return
    assert round_trip(tmp_path, arr)["ids"] == [int(x) for x in flatten(arr)]


def test_negative_values_in_arrays_are_refused(tmp_path: Path):
    probe = NativeProbe(str(tmp_path))
    with pytest.raises(ValueError):
        probe.record_step(1, monotonic_ns(), ["r"], [0], [2], None, [0],
                          token_ids=np.array([[3], [-4]])[:, 0], run_counts=[2])
    probe.shutdown(1.0)


def test_a_float_array_is_not_a_token_id_column(tmp_path: Path):
    probe = NativeProbe(str(tmp_path))
    with pytest.raises(ValueError):
        probe.record_step(1, monotonic_ns(), ["r"], [0], [2], None, [0],
                          token_ids=np.array([1.0, 2.0]), run_counts=[2])
    probe.shutdown(1.0)


class EmptiesItsColumn:
    """An int-like whose `__index__` empties the column it sits in: Python
    code run in the middle of a read must not leave the probe holding items
    that are gone (each item is held while its values are asked for)."""

    def __init__(self) -> None:
        self.column: list = []

    def __index__(self) -> int:
        self.column.clear()
        return 3


@pytest.mark.parametrize("nested", [False, True])
def test_an_index_method_that_empties_its_column_is_survived(tmp_path: Path, nested: bool):
    odd = EmptiesItsColumn()
    # Only the column holds the inner list, so clearing it would free the
    # list being read were it not held.
    column = [[odd, 5, 6], [7]] if nested else [odd, 5, 6]
    odd.column = column
    probe = NativeProbe(str(tmp_path))
    with pytest.raises(TypeError, match="changed while being read"):
        probe.record_step(1, monotonic_ns(), ["r"], [0], [4], None, [0], token_ids=column, run_counts=[4])
    assert probe.shutdown(5.0)


class ClearsOnCompare(str):
    """A request id whose `__eq__` empties the id list being looked up."""

    ids: list = []

    def __eq__(self, other: object) -> bool:
        ClearsOnCompare.ids.clear()
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_key_compare_that_empties_the_id_list_is_survived(tmp_path: Path):
    key = "req-1"
    ids = [ClearsOnCompare("req-0"), ClearsOnCompare(key)]
    ClearsOnCompare.ids = ids
    scheduled = {"req-0x": 1, key: 2}  # other objects: every id is looked up
    probe = NativeProbe(str(tmp_path))
    try:
        probe.record_step(0, monotonic_ns(), ids, None, None, [], [], scheduled=scheduled, computed=[0, 0])
    except (TypeError, ValueError) as e:
        assert "changed while being read" in str(e) or "scheduled" in str(e)
    assert probe.shutdown(5.0)
