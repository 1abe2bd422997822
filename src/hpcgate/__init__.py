"""hpcgate: a JupyterHub gateway to HPC systems."""

__version__ = "0.1.0"
