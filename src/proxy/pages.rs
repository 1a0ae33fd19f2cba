//! The HTML the gateway shows people: the sign-in (and sign-up) page, the page for a signed-in
//! person a route refuses, and the rate-limit page. Server-rendered, no script at all, one
//! inline stylesheet allowed by its hash in a strict `Content-Security-Policy`; every value
//! put into the page is escaped. No logic lives here: handlers decide, pages render.

use std::sync::LazyLock;

use base64::Engine as _;
use sha2::Digest as _;

/// The one stylesheet, inline (no request for a resource, nothing third-party).
const CSS: &str = "\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:#f3f4f6;color:#111827}\
main{width:100%;max-width:24rem;margin:1rem;background:#fff;border-radius:.75rem;\
box-shadow:0 1px 3px rgba(0,0,0,.1),0 8px 24px rgba(0,0,0,.06);padding:2rem}\
h1{font-size:1.5rem;margin:0 0 1.5rem}\
label{display:block;font-weight:600;margin:1rem 0 .25rem}\
input{width:100%;padding:.6rem .75rem;border:1px solid #9ca3af;border-radius:.5rem;font:inherit}\
input:focus,button:focus,a:focus{outline:3px solid #2563eb;outline-offset:2px}\
input[aria-invalid=true]{border-color:#b91c1c}\
button,.button{display:block;width:100%;margin-top:1.5rem;padding:.7rem;border:0;border-radius:.5rem;\
background:#1d4ed8;color:#fff;font:inherit;font-weight:600;text-align:center;text-decoration:none;cursor:pointer}\
.secondary{background:#fff;color:#1d4ed8;border:1px solid #1d4ed8;margin-top:.75rem}\
.error{background:#fef2f2;color:#991b1b;border:1px solid #fecaca;border-radius:.5rem;padding:.75rem;margin:0 0 1rem}\
.or{text-align:center;color:#6b7280;margin:1.5rem 0 0}\
p.small{font-size:.875rem;color:#4b5563;margin-top:1.5rem}";

/// `Content-Security-Policy` of every page: nothing may load or run but the stylesheet above;
/// forms post only here; no page may frame these.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(CSS));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
});

/// Headers every page carries besides the CSP.
pub const PAGE_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
];

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"referrer\" content=\"same-origin\">\
         <title>{title}</title><style>{CSS}</style></head>\
         <body><main>{body}</main></body></html>\n",
        title = escape(title),
    )
}

/// What the sign-in or sign-up form shows.
#[derive(Debug, Default)]
pub struct Form<'a> {
    /// Heading and title.
    pub title: &'a str,
    /// The generic error of a failed attempt, tied to the fields.
    pub error: Option<&'a str>,
    /// The email typed before (kept on a failed attempt; never the password).
    pub email: &'a str,
    /// Where to go after signing in.
    pub rd: &'a str,
    /// OIDC providers, one button each.
    pub providers: &'a [String],
    /// Sign-up instead of sign-in.
    pub register: bool,
    /// Offer the other form (sign-up when registration is on).
    pub other_form: bool,
}

/// The sign-in (or sign-up) page.
pub fn login(f: &Form<'_>) -> String {
    let (action, button, password_autocomplete) = if f.register {
        ("/auth/ui/register", "Create account", "new-password")
    } else {
        ("/auth/ui/login", "Sign in", "current-password")
    };
    let rd = escape(f.rd);
    let invalid = if f.error.is_some() {
        " aria-invalid=\"true\" aria-describedby=\"form-error\""
    } else {
        ""
    };
    let mut body = format!("<h1>{}</h1>", escape(f.title));
    if let Some(error) = f.error {
        body.push_str(&format!(
            "<p class=\"error\" id=\"form-error\" role=\"alert\">{}</p>",
            escape(error)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
         <label for=\"email\">Email</label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required \
         autofocus value=\"{email}\"{invalid}>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"{password_autocomplete}\" required{invalid}>\
         <button type=\"submit\">{button}</button></form>",
        email = escape(f.email),
    ));
    if !f.register && !f.providers.is_empty() {
        body.push_str("<p class=\"or\">or</p>");
        for name in f.providers {
            let href = format!(
                "/auth/oidc/{}/login?rd={}",
                escape(&url_component(name)),
                escape(&url_component(f.rd))
            );
            body.push_str(&format!(
                "<a class=\"button secondary\" href=\"{href}\">Continue with {}</a>",
                escape(name)
            ));
        }
    }
    if f.other_form {
        let (href, text) = if f.register {
            ("/auth/ui/login", "Already have an account? Sign in")
        } else {
            ("/auth/ui/register", "No account yet? Create one")
        };
        body.push_str(&format!(
            "<p class=\"small\"><a href=\"{href}?rd={}\">{text}</a></p>",
            escape(&url_component(f.rd))
        ));
    }
    document(f.title, &body)
}

/// The page for a signed-in person a route refuses: who they are, and a way to sign out.
pub fn forbidden(email: &str) -> String {
    document(
        "Access denied",
        &format!(
            "<h1>Access denied</h1><p>You are signed in as <strong>{}</strong>, \
             and this account may not open this page.</p>\
             <form method=\"post\" action=\"/auth/ui/logout\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(email)
        ),
    )
}

/// Too many attempts.
pub fn rate_limited(retry_after_secs: u64) -> String {
    document(
        "Too many attempts",
        &format!(
            "<h1>Too many attempts</h1><p role=\"alert\">Please wait {retry_after_secs} \
             seconds, then <a href=\"/auth/ui/login\">try again</a>.</p>"
        ),
    )
}

/// An error page with a short message (a provider that is down, a refused form).
pub fn message(title: &str, text: &str) -> String {
    document(
        title,
        &format!(
            "<h1>{}</h1><p role=\"alert\">{}</p><p><a href=\"/auth/ui/login\">Back to sign in</a></p>",
            escape(title),
            escape(text)
        ),
    )
}

/// Percent-encodes a query component.
pub fn url_component(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_escaped_and_nothing_runs() {
        let page = login(&Form {
            title: "Sign <in>",
            error: Some("<b>nope</b>"),
            email: "\"><script>alert(1)</script>",
            rd: "/x?a=\"b\"&c=<d>",
            providers: &["corp\"x".to_string()],
            register: false,
            other_form: true,
        });
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<b>nope"), "{page}");
        assert!(page.contains("&quot;&gt;&lt;script&gt;"), "{page}");
        assert!(page.contains("aria-describedby=\"form-error\""));
        assert!(
            page.contains("<label for=\"email\">") && page.contains("<label for=\"password\">")
        );
        assert!(page.contains("/auth/oidc/corp%22x/login?rd="), "{page}");
        assert!(!CSP.contains("unsafe-inline") && CSP.contains("frame-ancestors 'none'"));
        assert!(forbidden("<a@b.c>").contains("&lt;a@b.c&gt;"));
    }

    #[test]
    fn the_csp_allows_exactly_the_inline_stylesheet() {
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(CSS));
        assert!(CSP.contains(&format!("'sha256-{hash}'")));
        let page = login(&Form {
            title: "t",
            ..Form::default()
        });
        assert!(page.contains(&format!("<style>{CSS}</style>")));
    }
}
