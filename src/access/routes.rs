//! The route table, built once per config load: longest prefix first, then routes with a
//! host, then routes with methods; the first route that matches wins.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::Method;

use crate::config::{AuthMode, Route};
use crate::model::Role;

/// One compiled route.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// Path prefix (case-sensitive).
    pub prefix: String,
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
}

impl RouteEntry {
    fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
        path.starts_with(&self.prefix)
            && self
                .host
                .as_deref()
                .is_none_or(|h| host.is_some_and(|req| req.eq_ignore_ascii_case(h)))
            && (self.methods.is_empty() || self.methods.contains(method))
    }

    /// Whether `role` may use this route.
    pub fn allows(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }

    /// The path the upstream receives for the normalized request `path`.
    pub fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        if !self.strip_prefix {
            return path.into();
        }
        let rest = path.strip_prefix(self.prefix.as_str()).unwrap_or(path);
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        }
    }
}

/// Routes sharing one prefix length, by prefix, each list in match order.
type ByPrefix = HashMap<String, Vec<Arc<RouteEntry>>>;

/// All routes, indexed for matching: for each prefix length (longest first), the routes with
/// that exact prefix in match order. A lookup is one hash probe per distinct prefix length
/// instead of a scan of every route.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_length: Vec<(usize, ByPrefix)>,
    count: usize,
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
                })
            })
            .collect();
        // Within one prefix: routes with a host first, then routes with methods.
        entries.sort_by_key(|e| (e.host.is_none(), e.methods.is_empty()));
        let count = entries.len();
        let mut index: BTreeMap<usize, ByPrefix> = BTreeMap::new();
        for entry in entries {
            index
                .entry(entry.prefix.len())
                .or_default()
                .entry(entry.prefix.clone())
                .or_default()
                .push(entry);
        }
        Routes {
            by_length: index.into_iter().rev().collect(),
            count,
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
        self.by_length
            .iter()
            .filter(|(len, _)| *len <= path.len() && path.is_char_boundary(*len))
            .filter_map(|(len, routes)| routes.get(&path[..*len]))
            .flat_map(|candidates| candidates.iter())
            .find(|e| e.matches(host, method, path))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no routes (everything is 404).
    pub fn is_empty(&self) -> bool {
        self.count == 0
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
        assert!(
            routes.find(None, &Method::GET, "/API/x").is_none(),
            "case-sensitive"
        );
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
