"""nginx `proxy_pass` without authentication: the bar for what a plain proxy costs.

Also provides `start_nginx`, the one-worker nginx instance (own prefix, no access log, long
keep-alive) that the upstream uses too.
"""

import os
import shutil

from ..machine import first_line

NAME = "nginx"
LABEL = "nginx proxy_pass (no auth)"
ORDER = 10
JWT = False
MISSING = "nginx not installed: nginx proxy_pass peer skipped"


def binary():
    return shutil.which("nginx")


def version():
    return first_line(["nginx", "-v"]) if binary() else None


def start_nginx(procs, name, tmp, cpu, http_body, workers=1):
    """One nginx instance (`workers` workers, own prefix, no access log) serving `http_body`."""
    prefix = os.path.join(tmp, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
{http_body}
}}
"""
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return procs.start(name, ["nginx", "-p", prefix, "-c", path], cpu=cpu)


def start(ctx, port, cpu, workers=1, name="nginx-proxy", upstream_port=None):
    return start_nginx(ctx.procs, name, ctx.tmp, cpu, f"""  upstream up {{
    server 127.0.0.1:{upstream_port or ctx.up_port};
    keepalive 128;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}""", workers)
