"""HAProxy `jwt_verify`: another proxy that validates the same ES256 tokens itself.

It checks alg, signature, iss, aud, exp (against `date()`) and the role claim on every request;
it has no cache of verified tokens.
"""

import os
import shutil

from ..machine import first_line

NAME = "haproxy"
LABEL = "HAProxy jwt_verify ES256"
ORDER = 20
JWT = True
MISSING = "haproxy not installed: HAProxy jwt_verify peer skipped"


def binary():
    return shutil.which("haproxy")


def version():
    return first_line(["haproxy", "-v"]) if binary() else None


def start(ctx, port, cpu, workers=1):
    conf = f"""global
  nbthread {workers}
  maxconn 4096
  log stderr format raw local0 err

defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 120s
  option http-keep-alive
  http-reuse always

frontend bench
  bind 127.0.0.1:{port}
  http-request deny deny_status 401 unless {{ http_auth_bearer -m found }}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request set-var(txn.role) var(txn.bearer),jwt_payload_query('$.role')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str ES256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{ctx.pubkey}") -m int 1 }}
  http-request deny deny_status 401 unless {{ var(txn.iss) -m str {ctx.issuer} }}
  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {ctx.audience} }}
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request deny deny_status 403 unless {{ var(txn.role) -m str user }}
  default_backend up

backend up
  server up1 127.0.0.1:{ctx.up_port} maxconn 1000
"""
    path = os.path.join(ctx.tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return ctx.procs.start("haproxy", ["haproxy", "-db", "-f", path], cpu=cpu)
