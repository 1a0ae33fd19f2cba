#!/usr/bin/env python3
"""Load harness for portcullis (run it through benches/load/run.sh, which installs and builds).

One machine, loopback only. The gateway (and the proxy peers) are pinned to one core, the load
generator and the static upstream to the other. Measured, in alternating rounds:

  direct     load generator -> upstream                      (the limit of the load core)
  public     -> portcullis, route auth = "none"              -> upstream
  protected  -> portcullis, auth = "required", roles ["user"], valid ES256 token -> upstream
  nginx      -> nginx proxy_pass (keepalive upstream)        -> upstream           (if installed)
  haproxy    -> HAProxy jwt_verify ES256 + exp/iss/aud/role  -> upstream           (if installed)
  envoy      -> Envoy jwt_authn ES256 (JWT cache on) + RBAC role = user -> upstream (if installed)

then the same targets with one connection (the latency a proxy adds to one request), at a fixed
rate with oha (25/50/75 % of protected's saturation: latency added by each proxy, open loop),
login throughput against the raw argon2 rate, protected p99 under a login storm vs. idle,
refresh throughput (rotating token chains), revocation propagation between two instances, the
access log's cost and a 13-route operator config (with upstream keep-alive reuse), and with
--threads N the gateway with N threads against nginx with N workers, nothing pinned.
--only KEYS runs only some of these (e.g. --only realistic).
Writes results.json, results.md, latency.svg and added-latency.svg into --out. Standard
library only.

Every JWT peer (and the protected route) is first checked: 200 with the valid token, 401
without one or with a bad signature, 401/403 with a valid token of the wrong role.

`bench.py --render DIR` re-renders results.md and the charts from DIR/results.json.
`bench.py --update-readme README.md DIR` replaces the generated block of the README's
Benchmarks section (between the bench:begin/bench:end markers) with DIR/results.md.

The code lives in benches/load/harness/ (one module per peer and per measurement; see
harness/__init__.py); this file is only the entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__doc__))
