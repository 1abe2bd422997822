# Put first on JUPYTER_CONFIG_PATH by hpcgate-singleuser when HPCGATE_LOG_FORMAT=json:
# every Jupyter application of the lab (server, extensions) logs JSON lines.
from hpcgate.logs import lab_logging_config

c = get_config()  # noqa: F821
c.Application.logging_config = lab_logging_config()
