"""The proxies measured beside portcullis: discovered, started, verified, turned into targets.

A peer is one module in this package with:

  NAME     short name: results.json key, target name
  LABEL    the row label in the tables
  ORDER    position among the peers (table and round order)
  JWT      True when it validates the bearer token (then it must also refuse bad tokens)
  MISSING  the note written when its binary is not installed
  binary()                    path of its executable, or None when it is not installed
  version()                   one line naming its version (recorded in results.json)
  start(ctx, port, cpu, workers=1) -> Popen   start it on 127.0.0.1:port, proxying to
                              ctx.up_port, pinned to `cpu` (None: unpinned) with `workers`
                              workers/threads

gateway.py (portcullis itself) is not one of them: it is started first, because the token the
peers check comes from it. Every peer is verified before it is measured (`verify`): it must
answer 200 with the valid token and, when JWT, 401 without a token or with a bad signature and
401/403 with a valid token of the wrong role. A peer that fails is skipped with a note.
"""

import importlib
import pkgutil

from ..client import API_PATH, request, wait_http
from ..procs import free_port, tail


def modules():
    """The peer modules in ORDER."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        m = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(m, "ORDER") and hasattr(m, "start"):
            found.append(m)
    return sorted(found, key=lambda m: m.ORDER)


def bad_signature(token):
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


def verify(ctx, port, jwt, proc=None):
    """The answers of the peer on `port` to the valid token and, when `jwt`, to bad ones.
    Returns (ok, checks)."""
    if not wait_http(port, API_PATH, 10, proc, want=None):
        return False, {"started": False}

    def status(token):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return request(port, "GET", API_PATH, headers=headers)[0]
        except OSError as e:
            return repr(e)

    checks = {"valid token": status(ctx.token)}
    ok = checks["valid token"] == 200
    if jwt:
        checks["no token"] = status(None)
        checks["bad signature"] = status(bad_signature(ctx.token))
        ok = ok and checks["no token"] == 401 and checks["bad signature"] == 401
        if ctx.wrong_role_token:
            checks["wrong role"] = status(ctx.wrong_role_token)
            ok = ok and checks["wrong role"] in (401, 403)
    return ok, checks


def target(name, label, port, headers, pid):
    return {"name": name, "label": label, "url": f"http://127.0.0.1:{port}{API_PATH}", "headers": headers, "pid": pid}


def start_all(ctx):
    """Starts every installed peer pinned to the proxy core; appends the verified ones to
    ctx.targets and their processes to ctx.peers."""
    for m in modules():
        if not m.binary():
            ctx.notes.append(m.MISSING)
            continue
        port = free_port()
        p = m.start(ctx, port, ctx.proxy_cpu)
        ok, checks = verify(ctx, port, m.JWT, p)
        ctx.checks[m.NAME] = checks
        if ok:
            ctx.targets.append(target(m.NAME, m.LABEL, port, ctx.auth_header, p.pid))
            ctx.peers.append(p)
        else:
            ctx.notes.append(f"{m.LABEL} peer failed its checks ({checks}), skipped: {tail(p.bench_log, 3)}")
            ctx.procs.stop(p)
