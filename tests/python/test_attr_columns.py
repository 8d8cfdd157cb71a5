"""`attr_columns`: several attributes of many objects in one native pass (the
vLLM adapter reads its per-request outputs this way). It must equal the
Python it replaces, exceptions included."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from toktrace._native import attr_columns


@dataclass
class Output:
    request_id: str
    new_token_ids: list[int]
    finish_reason: int | None = None


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b


def test_columns_equal_the_comprehensions():
    outs = [Output(f"r{i}", [i, i + 1], None if i % 3 else 1) for i in range(50)]
    ids, tokens, reasons = attr_columns(outs, ("request_id", "new_token_ids", "finish_reason"))
    assert ids == [o.request_id for o in outs]
    assert tokens == [o.new_token_ids for o in outs]
    assert reasons == [o.finish_reason for o in outs]
    # The same objects, not copies.
    assert all(a is b.new_token_ids for a, b in zip(tokens, outs))


def test_tuples_slots_and_empty_inputs():
    objs = (Slotted(1, "x"), Slotted(2, "y"))
    assert attr_columns(objs, ("b", "a")) == (["x", "y"], [1, 2])
    assert attr_columns([], ("a", "b")) == ([], [])
    assert attr_columns(objs, ()) == ()


def test_a_missing_attribute_raises_attribute_error():
    with pytest.raises(AttributeError):
        attr_columns([Slotted(1, 2), Output("r", [])], ("a",))


def test_only_lists_and_tuples_are_taken():
    with pytest.raises(TypeError):
        attr_columns(iter([Slotted(1, 2)]), ("a",))
    with pytest.raises(TypeError):
        attr_columns([Slotted(1, 2)], "a")  # a str is not a sequence of names here
