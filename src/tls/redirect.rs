//! `redirect_http`: where a plain-HTTP request is sent, and which requests stay on plain HTTP
//! (ACME HTTP-01 challenges, which a CA fetches over port 80 only).

/// Path prefix of ACME HTTP-01 challenges (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Whether a (normalized) path is an ACME HTTP-01 challenge and must not be redirected.
pub fn is_acme_challenge(path: &str) -> bool {
    path.starts_with(ACME_CHALLENGE_PREFIX)
}

/// `https://<host>[:<tls_port>]<path_and_query>` for a request that named `authority` (a Host
/// header or the request target's authority; its port is dropped). `None` when the authority
/// is missing or not a plain host name / IP literal, so no redirect can point elsewhere.
pub fn https_location(
    authority: Option<&str>,
    tls_port: u16,
    path_and_query: &str,
) -> Option<String> {
    let host = host_without_port(authority?.trim())?;
    let port = if tls_port == 443 {
        String::new()
    } else {
        format!(":{tls_port}")
    };
    let target = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(format!(
        "https://{}{port}{target}",
        host.to_ascii_lowercase()
    ))
}

/// The host part of `host[:port]` or `[v6][:port]`, checked to hold only host characters.
fn host_without_port(authority: &str) -> Option<&str> {
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        let inner = &host[1..host.len() - 1];
        let ok = !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if !ok || !(rest.is_empty() || port_ok(rest)) {
            return None;
        }
        host
    } else {
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if port_ok(&format!(":{p}")) => h,
            Some(_) => return None,
            None => authority,
        };
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !ok {
            return None;
        }
        host
    };
    Some(host)
}

/// `:digits` (an empty port is allowed by RFC 3986).
fn port_ok(rest: &str) -> bool {
    rest.strip_prefix(':')
        .is_some_and(|p| p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_keeps_path_and_query_and_drops_the_plain_port() {
        assert_eq!(
            https_location(Some("api.example.com:8080"), 8443, "/api/x?a=1&b=2").as_deref(),
            Some("https://api.example.com:8443/api/x?a=1&b=2")
        );
    }

    #[test]
    fn port_443_is_left_out_of_the_location() {
        assert_eq!(
            https_location(Some("Api.Example.com"), 443, "/").as_deref(),
            Some("https://api.example.com/")
        );
    }

    #[test]
    fn ipv6_literals_keep_their_brackets() {
        assert_eq!(
            https_location(Some("[::1]:8080"), 8443, "/p").as_deref(),
            Some("https://[::1]:8443/p")
        );
    }

    #[test]
    fn a_missing_or_odd_host_gets_no_location() {
        assert_eq!(https_location(None, 443, "/"), None);
        assert_eq!(https_location(Some(""), 443, "/"), None);
        assert_eq!(https_location(Some("evil.com/x"), 443, "/"), None);
        assert_eq!(https_location(Some("user@evil.com"), 443, "/"), None);
        assert_eq!(https_location(Some("a.com:80x"), 443, "/"), None);
        assert_eq!(https_location(Some("[zz]"), 443, "/"), None);
    }

    #[test]
    fn a_target_that_is_not_origin_form_redirects_to_the_root() {
        assert_eq!(
            https_location(Some("a.test"), 443, "*").as_deref(),
            Some("https://a.test/")
        );
    }

    #[test]
    fn only_paths_under_the_challenge_directory_are_acme() {
        assert!(is_acme_challenge("/.well-known/acme-challenge/token"));
        assert!(!is_acme_challenge("/.well-known/acme-challenge"));
        assert!(!is_acme_challenge("/.well-known/other"));
    }
}
