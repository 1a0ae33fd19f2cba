//! The browser side of the proxy: the two session cookies a sign-in sets (and a failed
//! refresh or a sign-out clears), and the way to the sign-in page. The reading of cookies,
//! navigations and origins is `access::browser`; the pages are `pages`.

use crate::access::browser::CookieNames;
use crate::auth::TokenPair;

/// The attributes of both cookies: only over https (browsers make an exception for
/// http://localhost), never readable by scripts, sent on top-level navigations from other
/// sites (a link to a protected page works) but not on their sub-requests or form posts.
const ATTRIBUTES: &str = "Path=/; Secure; HttpOnly; SameSite=Lax";

/// `Set-Cookie` values carrying `pair`: both live as long as the session (an expired access
/// JWT is still sent, so the gateway can tell "expired" from "signed out" and refresh it).
pub fn session_cookies(names: &CookieNames, pair: &TokenPair) -> [String; 2] {
    let max_age = pair.refresh_expires_in;
    [
        format!(
            "{}={}; {ATTRIBUTES}; Max-Age={max_age}",
            names.access, pair.access_token
        ),
        format!(
            "{}={}; {ATTRIBUTES}; Max-Age={max_age}",
            names.refresh, pair.refresh_token
        ),
    ]
}

/// `Set-Cookie` values removing both cookies (`Max-Age=0`, and a past `Expires` for clients
/// that only honour that).
pub fn cleared_cookies(names: &CookieNames) -> [String; 2] {
    const GONE: &str = "Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT";
    [
        format!("{}=; {ATTRIBUTES}; {GONE}", names.access),
        format!("{}=; {ATTRIBUTES}; {GONE}", names.refresh),
    ]
}

/// The sign-in page, coming back to `rd` afterwards.
pub fn login_location(rd: &str) -> String {
    format!("/auth/ui/login?rd={}", super::pages::url_component(rd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_host_only_secure_http_only_and_lax() {
        let names = CookieNames::new("__Host-portcullis");
        let [at, rt] = cleared_cookies(&names);
        assert_eq!(
            at,
            "__Host-portcullis-at=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0; \
             Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert!(rt.starts_with("__Host-portcullis-rt=;"));
        assert!(!at.to_ascii_lowercase().contains("domain="));
        assert_eq!(
            login_location("/a?b=c&d"),
            "/auth/ui/login?rd=%2Fa%3Fb%3Dc%26d"
        );
    }
}
