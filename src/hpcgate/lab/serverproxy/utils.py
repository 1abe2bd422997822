"""jupyter-server-proxy's ``utils`` names."""

from __future__ import annotations

from ...appspec import call_with_named_args as call_with_asked_args

__all__ = ["call_with_asked_args"]
