"""jupyter-server-proxy's Python names, served by hpcgate.lab.

What code written for jupyter-server-proxy imports works on hpcgate's proxy:
``config.ServerProxy`` (the ``c.ServerProxy.*`` options), ``handlers.ProxyHandler``
(subclasses calling ``proxy(host, port, path)`` / ``proxy_open(host, port, path)``),
``handlers.AddSlashHandler``, ``handlers.RewritableResponse``,
``utils.call_with_asked_args``, and (:mod:`.api`) the endpoints its JupyterLab
extension calls: ``<base>/server-proxy/servers-info`` and ``<base>/server-proxy/icon/<name>``.
hpcgate does not install a module named ``jupyter_server_proxy``; the compatibility
test (tests/lab/test_jsp_compat.py) maps that name onto this package.
"""
