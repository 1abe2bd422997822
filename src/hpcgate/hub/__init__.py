"""Everything that runs inside the JupyterHub process."""

from pathlib import Path

from .handlers import extra_handlers


def template_paths() -> list[str]:
    """Directories for ``c.JupyterHub.template_paths``: hpcgate's pages (the home page
    says why a server stopped when it ended without a stop from the hub)."""
    return [str(Path(__file__).parent / "templates")]


__all__ = ["extra_handlers", "template_paths"]
