# jupyterhub-idle-culler's config for hpcgate (loaded with --config): per-server limits
# from the catalog, decided by hpcgate's arbiter (see hpcgate.hub.culling).
import os

import hpcgate.hub.culling
import hpcgate.logs

c = get_config()  # type: ignore[name-defined]  # noqa: F821
c.IdleCuller.cull_arbiter_hook = hpcgate.hub.culling.cull_arbiter
if os.environ.get(hpcgate.logs.FORMAT_ENV) == "json":
    # the hub logs JSON lines (hpcgate up --log-format json): so does its culler
    c.IdleCuller.logging_config = {"formatters": {"console": {"class": "hpcgate.logs.JSONFormatter"}}}
