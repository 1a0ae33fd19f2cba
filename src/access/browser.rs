//! How a browser's request is read: the gateway's two cookies beside other cookies, whether a
//! request is a navigation (a person opening a page, who can be sent to sign in) or an API
//! call (which must get a 401, never a redirect), and the checks against cross-site request
//! forgery for cookie-authenticated writes. Pure functions over header values.

use http::{HeaderMap, Method};

/// The names of the gateway's cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieNames {
    /// The access JWT.
    pub access: String,
    /// The refresh token.
    pub refresh: String,
}

impl CookieNames {
    /// `<prefix>-at` and `<prefix>-rt`.
    pub fn new(prefix: &str) -> CookieNames {
        CookieNames {
            access: format!("{prefix}-at"),
            refresh: format!("{prefix}-rt"),
        }
    }

    /// Whether `name` is one of the gateway's cookies.
    pub fn owns(&self, name: &str) -> bool {
        name == self.access || name == self.refresh
    }
}

/// Every `name=value` pair of the `Cookie` headers (HTTP/2 may split them over several).
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
}

/// The value of cookie `name`, when sent exactly once and not empty. Two cookies of the
/// same name (one planted by a sibling subdomain, say) are ambiguous: neither is used.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = pairs(headers).filter(|(n, _)| *n == name).map(|(_, v)| v);
    match (found.next(), found.next()) {
        (Some(v), None) if !v.is_empty() && v.len() <= MAX_COOKIE_BYTES => Some(v),
        _ => None,
    }
}

/// What a request presents: the bearer token of its `Authorization` header, or — only when it
/// sends none and browser sessions are on — its access cookie. One reading for the proxy path
/// and forward-auth.
#[derive(Debug)]
pub struct Credential<'h> {
    /// The token (or why the `Authorization` headers are unusable).
    pub bearer: Result<Option<&'h str>, super::Denial>,
    /// The token is the access cookie's.
    pub from_cookie: bool,
    /// The gateway's cookies count for this request (browser sessions on, no `Authorization`).
    pub cookies_apply: bool,
}

/// Reads the credential of `headers`; `cookies` is `Some` when browser sessions are on.
pub fn credential<'h>(headers: &'h HeaderMap, cookies: Option<&CookieNames>) -> Credential<'h> {
    let authorization = super::bearer(
        headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    // An Authorization header always wins over the cookie.
    let names = cookies.filter(|_| matches!(authorization, Ok(None)));
    match names.and_then(|n| cookie(headers, &n.access)) {
        Some(token) => Credential {
            bearer: Ok(Some(token)),
            from_cookie: true,
            cookies_apply: true,
        },
        None => Credential {
            bearer: authorization,
            from_cookie: false,
            cookies_apply: names.is_some(),
        },
    }
}

/// Longest cookie value read (browsers keep at most 4 KiB per cookie).
pub const MAX_COOKIE_BYTES: usize = 4096;

/// The `Cookie` header the upstream gets: every other cookie, in order; `None` when nothing
/// is left (the header is then dropped).
pub fn without_ours(headers: &HeaderMap, names: &CookieNames) -> Option<String> {
    let kept: Vec<String> = pairs(headers)
        .filter(|(n, _)| !names.owns(n))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Whether the request is a person opening a page (`Sec-Fetch-Mode: navigate`, or, from a
/// browser too old to send Fetch Metadata, an `Accept` naming `text/html`) with GET or HEAD:
/// the only requests sent to the sign-in page instead of a 401.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if *method != Method::GET && *method != Method::HEAD {
        return false;
    }
    match headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok()) {
        Some(mode) => mode.trim().eq_ignore_ascii_case("navigate"),
        None => headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
            }),
    }
}

/// Methods a cross-site page may trigger freely: they must not change state.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a cookie-authenticated write may proceed: refused when Fetch Metadata says it
/// comes from another site (`Sec-Fetch-Site: cross-site` or `same-site`), or when `Origin`
/// (`null` included) is neither `own_origin` nor one of `trusted`.
pub fn same_origin_write(headers: &HeaderMap, own_origin: &str, trusted: &[String]) -> bool {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    if matches!(site.as_deref(), Some("cross-site" | "same-site")) {
        return false;
    }
    match headers.get(http::header::ORIGIN) {
        None => true,
        Some(origin) => origin.to_str().is_ok_and(|o| {
            let o = o.trim();
            o.eq_ignore_ascii_case(own_origin) || trusted.iter().any(|t| o.eq_ignore_ascii_case(t))
        }),
    }
}

/// The request's own origin: `scheme://host[:port]` with the port left out when it is the
/// scheme's default.
pub fn origin_of(scheme: &str, host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let default = match scheme {
        "https" => ":443",
        _ => ":80",
    };
    let host = host.strip_suffix(default).unwrap_or(&host);
    format!("{scheme}://{host}")
}

/// Where a sign-in may send the browser afterwards: `rd` when it is a path on this site, or
/// an absolute http(s) URL on `own_host` or one of `allowed_hosts`; `/` otherwise (an open
/// redirect would let anyone use the sign-in page to send people elsewhere).
pub fn safe_redirect(rd: Option<&str>, own_host: Option<&str>, allowed_hosts: &[String]) -> String {
    let Some(rd) = rd.map(str::trim).filter(|r| !r.is_empty()) else {
        return "/".to_string();
    };
    if rd.chars().any(|c| c.is_control() || c == '\\') {
        return "/".to_string();
    }
    if rd.starts_with('/') {
        // `//host` and `/\host` are protocol-relative: another site.
        return if rd.starts_with("//") {
            "/".to_string()
        } else {
            rd.to_string()
        };
    }
    let Some((scheme, rest)) = rd.split_once("://") else {
        return "/".to_string();
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return "/".to_string();
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return "/".to_string();
    }
    let host = strip_port(authority).to_ascii_lowercase();
    let own = own_host.map(|h| strip_port(h).to_ascii_lowercase());
    if own.as_deref() == Some(host.as_str())
        || allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(&host))
    {
        rd.to_string()
    } else {
        "/".to_string()
    }
}

/// `host[:port]` without the port (IPv6 literals keep their brackets).
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn our_cookies_are_found_once_and_stripped_from_the_rest() {
        let names = CookieNames::new("__Host-p");
        let h = headers(&[
            ("cookie", "a=1; __Host-p-at=tok; b=2"),
            ("cookie", "__Host-p-rt=ref"),
        ]);
        assert_eq!(cookie(&h, "__Host-p-at"), Some("tok"));
        assert_eq!(cookie(&h, "__Host-p-rt"), Some("ref"));
        assert_eq!(without_ours(&h, &names).as_deref(), Some("a=1; b=2"));
        let only = headers(&[("cookie", "__Host-p-at=tok")]);
        assert_eq!(without_ours(&only, &names), None);
        // Twice, empty or oversized: not used.
        let twice = headers(&[("cookie", "__Host-p-at=x; __Host-p-at=y")]);
        assert_eq!(cookie(&twice, "__Host-p-at"), None);
        assert_eq!(
            cookie(&headers(&[("cookie", "__Host-p-at=")]), "__Host-p-at"),
            None
        );
        let big = format!("__Host-p-at={}", "a".repeat(MAX_COOKIE_BYTES + 1));
        assert_eq!(cookie(&headers(&[("cookie", &big)]), "__Host-p-at"), None);
    }

    #[test]
    fn only_get_and_head_page_loads_are_navigations() {
        let nav = headers(&[("sec-fetch-mode", "navigate")]);
        assert!(is_navigation(&Method::GET, &nav));
        assert!(is_navigation(&Method::HEAD, &nav));
        assert!(!is_navigation(&Method::POST, &nav));
        let fetch = headers(&[("sec-fetch-mode", "cors"), ("accept", "text/html")]);
        assert!(!is_navigation(&Method::GET, &fetch));
        let old = headers(&[("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")]);
        assert!(is_navigation(&Method::GET, &old));
        assert!(!is_navigation(
            &Method::GET,
            &headers(&[("accept", "application/json")])
        ));
        assert!(!is_navigation(&Method::GET, &headers(&[])));
    }

    #[test]
    fn cross_site_writes_are_refused() {
        let own = origin_of("https", "app.test:443");
        assert_eq!(own, "https://app.test");
        let ok = |h: &[(&'static str, &str)]| {
            same_origin_write(&headers(h), &own, &["https://admin.test".into()])
        };
        assert!(ok(&[]));
        assert!(ok(&[("origin", "https://app.test")]));
        assert!(ok(&[
            ("origin", "https://admin.test"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(!ok(&[("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        assert!(!ok(&[("origin", "null")]));
        assert!(!ok(&[("origin", "https://evil.test")]));
        assert!(!ok(&[("origin", "http://app.test")]));
        assert_eq!(origin_of("http", "localhost:8080"), "http://localhost:8080");
    }

    #[test]
    fn rd_stays_on_this_site_or_an_allowed_host() {
        let allowed = vec!["app.example.com".to_string()];
        let rd = |r: &str| safe_redirect(Some(r), Some("gw.test:8443"), &allowed);
        assert_eq!(rd("/admin/x?y=1"), "/admin/x?y=1");
        assert_eq!(rd("https://gw.test:8443/p"), "https://gw.test:8443/p");
        assert_eq!(rd("https://app.example.com/p"), "https://app.example.com/p");
        for bad in [
            "//evil.test/x",
            "https://evil.test/",
            "javascript:alert(1)",
            "https://gw.test@evil.test/",
            "/\\evil.test",
            "evil.test",
            "https://app.example.com.evil.test/",
            "/x\r\nSet-Cookie: a=b",
        ] {
            assert_eq!(rd(bad), "/", "{bad}");
        }
        assert_eq!(safe_redirect(None, None, &[]), "/");
    }
}
