"""Resolve a use case's own functions from its module file at run time (TFX's ``module_file`` / ``udf_utils``)."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int], ModuleType] = {}


class UserCodeError(ValueError):
    """A use case's module or one of its functions cannot be used (missing, not callable, wrong signature)."""


def load_module(path: str | Path) -> ModuleType:
    """Import the module file ``path`` under a name derived from its absolute path (re-imported when it changes)."""
    target = Path(path).resolve()
    if not target.is_file():
        raise UserCodeError(f"{target}: the use case's module file does not exist")
    key = (str(target), target.stat().st_mtime_ns)
    with _LOCK:
        module = _CACHE.get(key)
        if module is not None:
            return module
        name = "mlops_usecase_" + hashlib.sha256(str(target).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, target)
        if spec is None or spec.loader is None:
            raise UserCodeError(f"{target}: not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(name, None)
            raise UserCodeError(f"{target}: importing the module failed: {err!r}") from err
        _CACHE[key] = module
        return module


def load_function(
    path: str | Path, name: str, *, arity: int | None = None, required: bool = True
) -> Callable[..., Any] | None:
    """The function ``name`` of the module file ``path``; ``arity`` positional parameters are checked when given.

    :raises UserCodeError: the module cannot be imported, or ``name`` is missing (when ``required``), not callable
        or takes another number of positional arguments. The message names the file and the function.
    """
    module = load_module(path)
    fn = getattr(module, name, None)
    if fn is None:
        if required:
            raise UserCodeError(f"{Path(path).name}: no function {name}() (required by the use case)")
        return None
    if not callable(fn):
        raise UserCodeError(f"{Path(path).name}: {name} is not a function")
    if arity is not None:
        check_arity(fn, arity, f"{Path(path).name}: {name}()")
    return fn


def check_arity(fn: Callable[..., Any], arity: int, where: str) -> None:
    """Raise :class:`UserCodeError` unless ``fn`` can be called with exactly ``arity`` positional arguments."""
    try:
        inspect.signature(fn).bind(*range(arity))
    except TypeError as err:
        raise UserCodeError(f"{where} must take {arity} positional argument(s): {err}") from err
    except ValueError:  # builtins without a signature: trust them
        return
