"""The HTTP client of setup, checks and the revocation measurement (never of the load itself).

http.client on one connection is enough here and keeps the harness dependency-free; the load
comes from generators.py.
"""

import http.client
import json
import time

PASSWORD = "bench-password-0123456789"
API_PATH = "/api/bench"
PUBLIC_PATH = "/public/bench"


def request(port, method, path, body=None, headers=None, timeout=10.0, conn=None):
    """One request; returns (status, body bytes). Reuses `conn` when given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        out = resp.status, resp.read()
    finally:
        if own:
            conn.close()
    return out


def wait_http(port, path, deadline_s, proc=None, want=200):
    """Waits until GET path answers `want` (any status when want is None)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            st = request(port, "GET", path, timeout=1.0)[0]
            if want is None or st == want:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def login(port, email):
    st, body = request(port, "POST", "/auth/login", {"email": email, "password": PASSWORD})
    if st != 200:
        raise RuntimeError(f"login answered {st}: {body[:300]!r}")
    return json.loads(body)


def login_body(email):
    return json.dumps({"email": email, "password": PASSWORD})
