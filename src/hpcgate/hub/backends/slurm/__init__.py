"""The ``slurm`` backend, in three parts:

- :mod:`.template`: the job script, rendered from a sandboxed Jinja2 template;
- :mod:`.parse`: Slurm's words read (the one table of job states, pending reasons,
  ``squeue`` and ``sacct`` output);
- :mod:`.backend`: :class:`SlurmBackend` (submit, status, cancel over SSH on the
  login hosts, composing :class:`~hpcgate.hub.backends.login.LoginHosts`).
"""

from .backend import SlurmBackend

__all__ = ["SlurmBackend"]
