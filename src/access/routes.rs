//! The route table, built once per config load: longest prefix first, then routes with a
//! host, then routes with methods; the first route that matches wins.
//!
//! Prefixes match ignoring ASCII case unless a route opts out (Express and ASP.NET route
//! case-insensitively, so `/api/ADMIN/x` must get the rules of `/api/admin/`), and a path
//! equal to a prefix without its trailing slash (`/api/admin`) gets that route's rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use http::Method;

use crate::config::{AuthMode, Route};
use crate::model::Role;
use crate::telemetry::StatusCounters;

/// One compiled route.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// Path prefix.
    pub prefix: String,
    /// Match the prefix byte for byte instead of ignoring ASCII case.
    pub case_sensitive: bool,
    /// Lower-case host without port, if the route is host-specific.
    pub host: Option<String>,
    /// Methods matched; empty = all.
    pub methods: Vec<Method>,
    /// Authentication requirement.
    pub auth: AuthMode,
    /// Roles allowed; empty = any signed-in user.
    pub roles: Vec<Role>,
    /// Upstream name.
    pub upstream: String,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Forward the client's Authorization header.
    pub forward_token: bool,
    /// Idle timeout of a WebSocket tunnel on this route.
    pub websocket_idle_timeout: std::time::Duration,
    /// A second factor (`acr` `aal2`) is required.
    pub mfa: bool,
    /// The caller's authentication may be at most this old (seconds).
    pub max_auth_age_secs: Option<u64>,
    /// The proxy's request counters for this route, resolved on its first request so that
    /// counting never hashes label values (a reload builds new routes, fresh handles to the
    /// same series).
    pub requests: OnceLock<StatusCounters>,
}

impl RouteEntry {
    /// Whether `path` starts with the prefix (ignoring ASCII case unless case-sensitive).
    fn prefix_of(&self, path: &str) -> bool {
        let (prefix, path) = (self.prefix.as_bytes(), path.as_bytes());
        path.len() >= prefix.len() && {
            let head = &path[..prefix.len()];
            if self.case_sensitive {
                head == prefix
            } else {
                head.eq_ignore_ascii_case(prefix)
            }
        }
    }

    /// Whether `path` is the prefix without its trailing slash (`/api/admin` for `/api/admin/`).
    fn is_bare_prefix(&self, path: &str) -> bool {
        let (prefix, path) = (self.prefix.as_bytes(), path.as_bytes());
        prefix.len() > 1 && prefix.last() == Some(&b'/') && path.len() + 1 == prefix.len() && {
            let stem = &prefix[..path.len()];
            if self.case_sensitive {
                stem == path
            } else {
                stem.eq_ignore_ascii_case(path)
            }
        }
    }

    fn matches(&self, host: Option<&str>, method: &Method) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| host.is_some_and(|req| req.eq_ignore_ascii_case(h)))
            && (self.methods.is_empty() || self.methods.contains(method))
    }

    /// Whether `role` may use this route.
    pub fn allows(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }

    /// The path the upstream receives for the normalized request `path` (which this route
    /// matched, possibly as its bare prefix).
    pub fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        if !self.strip_prefix {
            return path.into();
        }
        let rest = path.get(self.prefix.len()..).unwrap_or("");
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        }
    }
}

/// FNV-1a over the ASCII-lowercased bytes: the index key of a prefix, equal for prefixes that
/// differ only in case. Candidates are checked exactly, so a collision costs only a comparison.
fn folded_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Routes sharing one prefix length, by folded prefix hash, each list in match order.
type ByPrefix = HashMap<u64, Vec<Arc<RouteEntry>>>;

/// All routes, indexed for matching: for each prefix length (longest first), the routes with
/// that exact prefix in match order. A lookup is one hash probe per distinct prefix length
/// instead of a scan of every route.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_length: Vec<(usize, ByPrefix)>,
    /// Routes whose prefix ends in `/`, by the folded hash of the prefix without it.
    bare: ByPrefix,
    /// Every route in match order, for listing.
    ordered: Vec<Arc<RouteEntry>>,
}

/// The host of a `Host` header value: port removed, IPv6 brackets kept.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

impl Routes {
    /// Compiles validated `[[route]]` entries.
    pub fn new(routes: &[Route]) -> Routes {
        let mut entries: Vec<Arc<RouteEntry>> = routes
            .iter()
            .map(|r| {
                Arc::new(RouteEntry {
                    prefix: r.prefix.clone(),
                    case_sensitive: r.case_sensitive,
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    methods: r
                        .methods
                        .iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                    auth: r.auth,
                    roles: r.roles.iter().filter_map(|s| Role::parse(s)).collect(),
                    upstream: r.upstream.clone(),
                    strip_prefix: r.strip_prefix,
                    forward_token: r.forward_token,
                    websocket_idle_timeout: std::time::Duration::from_secs(
                        r.websocket_idle_timeout_secs,
                    ),
                    mfa: r.mfa,
                    max_auth_age_secs: r.max_auth_age_secs,
                    requests: OnceLock::new(),
                })
            })
            .collect();
        // Within one prefix: exact-case routes first, then routes with a host, then with methods.
        entries.sort_by_key(|e| {
            (
                std::cmp::Reverse(e.prefix.len()),
                !e.case_sensitive,
                e.host.is_none(),
                e.methods.is_empty(),
            )
        });
        let mut index: BTreeMap<usize, ByPrefix> = BTreeMap::new();
        let mut bare = ByPrefix::new();
        for entry in &entries {
            let key = folded_hash(entry.prefix.as_bytes());
            index
                .entry(entry.prefix.len())
                .or_default()
                .entry(key)
                .or_default()
                .push(entry.clone());
            if let Some(stem) = entry.prefix.strip_suffix('/').filter(|s| !s.is_empty()) {
                bare.entry(folded_hash(stem.as_bytes()))
                    .or_default()
                    .push(entry.clone());
            }
        }
        Routes {
            by_length: index.into_iter().rev().collect(),
            bare,
            ordered: entries,
        }
    }

    /// The route for a request; `host` is the Host header (port ignored).
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Option<&Arc<RouteEntry>> {
        let host = host.map(host_without_port);
        let bare = (!path.ends_with('/'))
            .then(|| self.bare.get(&folded_hash(path.as_bytes())))
            .flatten()
            .into_iter()
            .flatten()
            .filter(|e| e.is_bare_prefix(path));
        let prefixed = self
            .by_length
            .iter()
            .filter(|(len, _)| *len <= path.len())
            .filter_map(|(len, routes)| routes.get(&folded_hash(&path.as_bytes()[..*len])))
            .flatten()
            .filter(|e| e.prefix_of(path));
        bare.chain(prefixed).find(|e| e.matches(host, method))
    }

    /// Every route in match order (longest prefix first).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.ordered.iter()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    /// Whether there are no routes (everything is 404).
    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: Option<&str>, methods: &[&str]) -> Route {
        Route {
            prefix: prefix.into(),
            upstream: format!("{prefix}|{host:?}|{methods:?}"),
            auth: AuthMode::Required,
            roles: vec![],
            methods: methods.iter().map(|m| m.to_string()).collect(),
            host: host.map(String::from),
            strip_prefix: false,
            forward_token: false,
            case_sensitive: false,
            websocket_idle_timeout_secs: 300,
            mfa: false,
            max_auth_age_secs: None,
        }
    }

    #[test]
    fn the_longest_prefix_wins_whatever_the_order() {
        let routes = Routes::new(&[route("/api/", None, &[]), route("/api/admin/", None, &[])]);
        let found = routes.find(None, &Method::GET, "/api/admin/x").unwrap();
        assert_eq!(found.prefix, "/api/admin/");
        assert_eq!(
            routes.find(None, &Method::GET, "/api/x").unwrap().prefix,
            "/api/"
        );
        assert!(routes.find(None, &Method::GET, "/other").is_none());
    }

    #[test]
    fn prefixes_match_ignoring_ascii_case_unless_a_route_opts_out() {
        let mut exact = route("/Docs/", None, &[]);
        exact.case_sensitive = true;
        let routes = Routes::new(&[
            route("/api/", None, &[]),
            route("/api/admin/", None, &[]),
            exact,
        ]);
        for path in ["/api/ADMIN/secret", "/API/admin/x", "/aPi/AdMiN/"] {
            assert_eq!(
                routes.find(None, &Method::GET, path).unwrap().prefix,
                "/api/admin/",
                "{path}"
            );
        }
        assert_eq!(
            routes.find(None, &Method::GET, "/Docs/x").unwrap().prefix,
            "/Docs/"
        );
        assert!(routes.find(None, &Method::GET, "/docs/x").is_none());
    }

    #[test]
    fn a_prefix_without_its_trailing_slash_gets_the_routes_rules() {
        let mut stripped = route("/svc/", None, &[]);
        stripped.strip_prefix = true;
        let routes = Routes::new(&[
            route("/api/", None, &[]),
            route("/api/admin/", None, &["GET"]),
            stripped,
        ]);
        for path in ["/api/admin", "/api/ADMIN"] {
            assert_eq!(
                routes.find(None, &Method::GET, path).unwrap().prefix,
                "/api/admin/",
                "{path}"
            );
        }
        // A method the stricter route does not match falls through to the broader one.
        assert_eq!(
            routes
                .find(None, &Method::POST, "/api/admin")
                .unwrap()
                .prefix,
            "/api/"
        );
        assert_eq!(
            routes
                .find(None, &Method::GET, "/api/adminx")
                .unwrap()
                .prefix,
            "/api/"
        );
        let svc = routes.find(None, &Method::GET, "/svc").unwrap();
        assert_eq!(svc.upstream_path("/svc"), "/");
        assert!(routes.find(None, &Method::GET, "/").is_none());
    }

    #[test]
    fn host_and_method_refine_a_prefix() {
        let routes = Routes::new(&[
            route("/x/", None, &[]),
            route("/x/", Some("Api.Example.com"), &[]),
            route("/x/", None, &["POST"]),
        ]);
        let by_host = routes
            .find(Some("api.example.COM:8080"), &Method::GET, "/x/1")
            .unwrap();
        assert_eq!(by_host.host.as_deref(), Some("api.example.com"));
        let by_method = routes.find(Some("other"), &Method::POST, "/x/1").unwrap();
        assert_eq!(by_method.methods, vec![Method::POST]);
        let fallback = routes.find(Some("other"), &Method::GET, "/x/1").unwrap();
        assert!(fallback.host.is_none() && fallback.methods.is_empty());
        let only_post = Routes::new(&[route("/y/", None, &["POST"])]);
        assert!(only_post.find(None, &Method::GET, "/y/").is_none());
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let mut r = route("/svc/", None, &[]);
        r.strip_prefix = true;
        let routes = Routes::new(&[r]);
        let e = routes.find(None, &Method::GET, "/svc/a/b").unwrap();
        assert_eq!(e.upstream_path("/svc/a/b"), "/a/b");
        assert_eq!(e.upstream_path("/svc/"), "/");
    }

    #[test]
    fn prefixes_are_plain_string_prefixes_even_mid_segment_or_mid_character() {
        let routes = Routes::new(&[route("/api", None, &[]), route("/caf\u{e9}/", None, &[])]);
        assert_eq!(
            routes.find(None, &Method::GET, "/apix").unwrap().prefix,
            "/api"
        );
        assert_eq!(
            routes
                .find(None, &Method::GET, "/caf\u{e9}/x")
                .unwrap()
                .prefix,
            "/caf\u{e9}/"
        );
        // "/caf" + the first byte of "é" is not a character boundary: no panic, no match.
        assert!(routes.find(None, &Method::GET, "/caf\u{e8}").is_none());
        assert_eq!(routes.len(), 2);
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("example.com"), "example.com");
    }
}
