"""A mini HPC cluster on one machine, for trying hpcgate and for the integration tests.

``Sandbox().up()`` builds it (root only): a login namespace with sshd and slurmctld, a
compute namespace with slurmd, real Unix accounts with SSH keys, a job venv and a
catalog. See :mod:`hpcgate.sandbox.cluster` and ``hpcgate sandbox up|down|status``.
"""

from .cluster import Sandbox, SandboxInfo, require_root
from .proc import SandboxError

__all__ = ["Sandbox", "SandboxError", "SandboxInfo", "require_root"]
