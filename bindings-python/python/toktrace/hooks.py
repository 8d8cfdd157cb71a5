"""Post-import hooks: run a callback right after a module is first imported.

A finder at the front of ``sys.meta_path`` notices watched module names, lets
the other finders find them as usual, and wraps the loader so the callback runs
once the module's code has executed. The module's ``__loader__`` and
``__spec__.loader`` are put back to the original loader before the callbacks
run, so nothing downstream sees the wrapper. A callback that raises is
reported by its owner (see ``activate``), never propagated into the import.
"""

from __future__ import annotations

import sys
import threading
from importlib.abc import MetaPathFinder
from types import ModuleType
from typing import Callable, Sequence

Callback = Callable[[ModuleType], None]

_lock = threading.RLock()
_watch: dict[str, list[Callback]] = {}
_finding: set[str] = set()


class _Loader:
    """Delegates to the real loader; runs the callbacks after exec_module."""

    def __init__(self, loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create else None

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with _lock:
            callbacks = _watch.pop(self._name, [])
        for cb in callbacks:
            try:
                cb(module)
            except Exception as exc:  # noqa: BLE001 - never break the host's import
                print(f"toktrace: post-import hook for {self._name} failed: {exc!r}", file=sys.stderr)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _Finder(MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None):
        if fullname not in _watch or fullname in _finding:
            return None
        _finding.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            _finding.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname)
        return spec


_finder = _Finder()


def when_imported(name: str, callback: Callback) -> None:
    """Run ``callback(module)`` once ``name`` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    with _lock:
        _watch.setdefault(name, []).append(callback)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
