"""Everything that runs inside the JupyterHub process."""

from .handlers import extra_handlers

__all__ = ["extra_handlers"]
