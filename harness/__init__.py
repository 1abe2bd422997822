"""The real components that the tests and the benchmarks start, shared by both.

- :mod:`harness.hub`: a real JupyterHub + configurable-http-proxy through ``hpcgate up``
  (:class:`~harness.hub.Hub`), and :func:`~harness.hub.wait_for`;
- :mod:`harness.sshd`: a real OpenSSH sshd on loopback and a stand-in lab
  (:data:`~harness.sshd.FAKE_LAB`);
- :mod:`harness.sandbox`: whether the sandbox cluster can be built here, and the
  test-only handles on it (cut the hub link, wait for a Slurm job).

Not part of the product (not in the wheel); importable from the repository root, which
pytest (``pythonpath``) and ``python -m benchmarks`` put on ``sys.path``. The tests'
own helpers live beside the tests (``tests/.../*tools.py``); benchmarks never import
from ``tests``.
"""
