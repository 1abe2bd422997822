"""Start-up of hpcgate's own processes that load the Jupyter stack: the hub and the lab.

Both import ``jupyter_events`` (JupyterHub's and the Jupyter server's event log), which
imports ``jsonschema``'s format checkers, which import ``rfc3987_syntax`` when it is
installed (it comes with ``jsonschema[format-nongpl]``, which ``jupyter_events``
requires). That module builds some 35 Lark Earley parsers when it is imported: 1.2-1.6 s
of CPU on this machine kind, about half of a lab's start and of the hub's, paid by every
spawn. It serves only the ``iri``/``iri-reference`` formats, which no Jupyter schema uses
(upstream: jupyter_server#1559, jsonschema#1428).

:func:`defer_rfc3987_syntax` puts a stand-in in its place before the stack loads: the
stand-in's ``is_valid_syntax`` (the name ``jsonschema`` imports) and any other attribute
import the real module on first use, so validation is exactly what it was and only the
cost moves to the first IRI check, if one ever comes. Nothing changes for a process that
does not call it, or where the module is not installed or already imported.

``hpcgate-hub`` (:func:`hub`, also ``python -m hpcgate.launch``) and
``hpcgate-singleuser`` (the lab, :mod:`hpcgate.singleuser`) call it first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED_MODULE = "rfc3987_syntax"
_MARK = "__hpcgate_deferred__"
# two threads making the first IRI check together must not both swap the module
_load_lock = threading.Lock()


def _real_module() -> types.ModuleType:
    with _load_lock:
        current = sys.modules.get(DEFERRED_MODULE)
        if current is not None and not getattr(current, _MARK, False):
            return current
        sys.modules.pop(DEFERRED_MODULE, None)
        try:
            return importlib.import_module(DEFERRED_MODULE)
        except BaseException:
            # keep the stand-in, so the next use tries again and says the same
            if current is not None:
                sys.modules[DEFERRED_MODULE] = current
            raise


def _stand_in() -> types.ModuleType:
    module = types.ModuleType(DEFERRED_MODULE, "stand-in for rfc3987_syntax, imported on first use (hpcgate.launch)")
    setattr(module, _MARK, True)

    def is_valid_syntax(*args: Any, **kwargs: Any) -> Any:
        return _real_module().is_valid_syntax(*args, **kwargs)

    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(_real_module(), name)

    module.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def defer_rfc3987_syntax() -> bool:
    """Put the stand-in for ``rfc3987_syntax`` in ``sys.modules``.

    Returns True when it did; False when the module is already imported (real or
    stand-in) or not installed. Call it before anything imports ``jsonschema``.
    """
    if DEFERRED_MODULE in sys.modules:
        return False
    if importlib.util.find_spec(DEFERRED_MODULE) is None:
        return False
    sys.modules[DEFERRED_MODULE] = _stand_in()
    return True


def hub(argv: list[str] | None = None) -> None:
    """``hpcgate-hub``: :func:`hpcgate.hub.app.main` after :func:`defer_rfc3987_syntax`."""
    defer_rfc3987_syntax()
    from .hub.app import main

    main(argv)


if __name__ == "__main__":
    hub()
