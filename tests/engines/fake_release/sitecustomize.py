"""Test scaffolding: makes the real vLLM installed here look like a release
toktrace does not know, in this interpreter and every child it starts (this
directory is on PYTHONPATH).

- TOKTRACE_TEST_VLLM_VERSION=X.Y.Z: vLLM reports version X.Y.Z (its
  ``vllm._version`` module is stood in before vLLM imports it); the code is
  the real release's.
- TOKTRACE_TEST_DROP=module:Class.attr: that attribute is removed as the
  module is imported, as a newer release might have removed it (a dict on
  the way, such as a dataclass's ``__dataclass_fields__``, loses the key).
"""

import os
import sys
import types

_version = os.environ.get("TOKTRACE_TEST_VLLM_VERSION")
if _version:
    fake = types.ModuleType("vllm._version")
    fake.__version__ = _version
    fake.version = _version
    fake.__version_tuple__ = tuple(int(p) for p in _version.split("."))
    fake.version_tuple = fake.__version_tuple__
    sys.modules["vllm._version"] = fake

_drop = os.environ.get("TOKTRACE_TEST_DROP")
if _drop:
    _module, _, _path = _drop.partition(":")
    _owner, _, _attr = _path.rpartition(".")

    def _remove(mod: types.ModuleType) -> None:
        obj = mod
        for part in _owner.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        if isinstance(obj, dict):
            del obj[_attr]
        else:
            delattr(obj, _attr)

    try:
        from toktrace import hooks

        hooks.when_imported(_module, _remove)
    except ImportError:
        pass
