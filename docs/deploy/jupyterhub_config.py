# /etc/hpcgate/jupyterhub_config.py: hpcgate's hub in production (docs/deployment.md).
# Run by hpcgate-hub.service. Secrets come from systemd credentials ($CREDENTIALS_DIRECTORY):
# this file holds none and may be world-readable. Site settings (login, admins, limits)
# belong in /etc/hpcgate/site_config.py, loaded last.
import os
from pathlib import Path

import hpcgate.hub
from hpcgate.database import read_url_file
from hpcgate.logs import hub_logging_config, lab_environment

c = get_config()  # noqa: F821
etc = Path(os.environ.get("HPCGATE_ETC", "/etc/hpcgate"))
state = Path(os.environ.get("STATE_DIRECTORY", "/var/lib/hpcgate"))
credentials = Path(os.environ["CREDENTIALS_DIRECTORY"])  # set by LoadCredential=

# --- logs: JSON lines on stderr, into the journal (journalctl -u hpcgate-hub -o cat) ---------
c.JupyterHub.logging_config = hub_logging_config()
c.Spawner.environment = lab_environment()  # labs log JSON lines too

# --- network: nginx (TLS) -> proxy 127.0.0.1:8000 -> hub 127.0.0.1:8081 ------------------------
c.JupyterHub.bind_url = "http://127.0.0.1:8000"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = 8081
# the proxy runs apart (hpcgate-proxy.service): a hub restart keeps every route
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:8001"
c.ConfigurableHTTPProxy.auth_token = (credentials / "proxy-auth-token").read_text().strip()

# --- state: PostgreSQL, the cookie secret; servers outlive hub restarts --------------------------
c.JupyterHub.db_url = read_url_file(credentials / "db-url")
c.JupyterHub.cookie_secret_file = str(credentials / "cookie-secret")
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.JupyterHub.pid_file = ""

# --- hpcgate ---------------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "hpcgate"
c.JupyterHub.extra_handlers = hpcgate.hub.extra_handlers()
c.JupyterHub.template_paths = hpcgate.hub.template_paths()  # the home page of session cards (and why a session stopped)
# several sessions per user; how many come from the catalog (sessions.per_user, .remembered)
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = hpcgate.hub.named_server_limit
c.JupyterHub.redirect_to_server = False  # after login: the home page of session cards
c.HPCGate.catalog_path = str(etc / "catalog.yaml")
c.HPCGate.state_dir = str(state)

# --- the site: authenticator, admins, anything else --------------------------------------------------
site = etc / "site_config.py"
if site.exists():
    load_subconfig(str(site))  # noqa: F821

# --- operations: idle culling, announcements, metrics (docs/deployment.md) ------------------------
# jupyterhub-idle-culler as a hub-managed service, with the catalog's per-partition
# idle_timeout and max_age (after the site config: it appends to services and roles)
import hpcgate.hub.culling  # noqa: E402
import hpcgate.hub.health  # noqa: E402

hpcgate.hub.culling.enable(c, cull_every=c.HPCGate.get("cull_every", 60), json_logs=True)
# the catalog's announcements on every hub page
c.JupyterHub.template_vars = {"announcement": hpcgate.hub.health.announcement_html,
                              **(c.JupyterHub.template_vars if "template_vars" in c.JupyterHub else {})}
# /hub/metrics needs a token with read:metrics (JupyterHub's default): give Prometheus
# a service of its own in site_config.py (see "Metrics")
