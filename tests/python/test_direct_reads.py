"""The probe reads lists, ints, floats and numpy arrays straight from memory
(bindings-python/src/layout.rs) once a check at start-up shows the layouts
match this interpreter; everything else goes through the C API. Either way a
column must come back exactly as given — these cases sit on the borders
between the two paths."""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np
import pytest

from conftest import records
from toktrace._native import NativeProbe, direct_reads, monotonic_ns


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


def test_this_interpreter_gets_the_direct_readers(tmp_path: Path):
    # Recording one numpy column teaches the probe numpy's layout.
    round_trip(tmp_path, np.arange(3))
    assert direct_reads() == (True, True, True, True, True)


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
