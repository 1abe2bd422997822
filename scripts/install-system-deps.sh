#!/usr/bin/env bash
# Install the Debian packages hpcgate's tests and sandbox need, only those missing.
# Needs root (CI and the sandbox run as root); a non-root user gets a clear message.
set -euo pipefail
pkgs=(
  chromium                       # browser tests (playwright drives /usr/bin/chromium)
  openssh-server openssh-client  # sandbox login host, tunnels
  munge slurm-wlm                # sandbox scheduler
  slurmdbd mariadb-server        # Slurm accounting: projects from associations (sandbox)
  bubblewrap                     # app isolation in the lab
  iproute2 procps psmisc         # namespaces, process checks
  python3-venv                   # the sandbox's job environment (/usr/bin/python3 -m venv)
  xvfb xterm xpra tigervnc-standalone-server websockify novnc  # desktop apps
  x11-apps                       # xwd: app tests read the X display to cross-check the browser
  postgresql                     # the hub on PostgreSQL (tests start their own server, as user postgres)
  nginx                          # TLS in front of the hub (tests/deploy)
  systemd                        # systemd-analyze verify for the shipped units (no systemd as PID 1 needed)
  slapd ldap-utils               # the directory (LDAP logins, sandbox)
  glewlwyd                       # the OIDC provider with TOTP (OIDC logins, sandbox)
  lmod                           # environment modules: kernels from module sets (sandbox)
  wrk                            # benchmarks/bench_lab_proxy.py: small GETs with a C client (one keep-alive connection)
  prometheus                     # scrapes /hub/metrics and the lab's metrics in tests/hub/test_metrics.py (tests start their own server)
)
missing=()
for p in "${pkgs[@]}"; do
  case "$p" in \#*) continue;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "hpcgate: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
  exit 1
fi
echo "hpcgate: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
