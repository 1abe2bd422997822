"""Everything that runs inside the JupyterHub process."""

from pathlib import Path

from .handlers import extra_handlers


def template_paths() -> list[str]:
    """Directories for ``c.JupyterHub.template_paths``: hpcgate's pages (the home page
    of session cards, each saying why it stopped; it extends JupyterHub's own)."""
    return [str(Path(__file__).parent / "templates")]


def named_server_limit(handler) -> int:
    """``c.JupyterHub.named_server_limit_per_user``: how many sessions a user may keep
    (running or stopped, with their options), from the catalog's ``sessions.remembered``
    -- read at every request, so a catalog change applies without a hub restart."""
    from .runtime import HPCGate

    return HPCGate.instance(config=handler.config).catalog().model.sessions.remembered


__all__ = ["extra_handlers", "named_server_limit", "template_paths"]
