//! Email rules of docs/api.md, "Objects": stored as given (trimmed), unique on NFKC + lowercase.

use unicode_normalization::UnicodeNormalization;

/// Validates `raw` and returns `(stored form, canonical form)`, or why it is invalid.
pub fn parse(raw: &str) -> Result<(String, String), &'static str> {
    let email = raw.trim();
    if email.is_empty() {
        return Err("email must not be empty");
    }
    if email.len() > 254 {
        return Err("email must be at most 254 bytes");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("email must not contain whitespace or control characters");
    }
    let mut parts = email.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) if !local.is_empty() && !domain.is_empty() => {}
        _ => return Err("email must contain exactly one '@' with text on both sides"),
    }
    Ok((email.to_string(), canonical(email)))
}

/// NFKC then lowercase: `Bob@X.io` and `bob@x.IO` are the same account.
pub fn canonical(email: &str) -> String {
    email.trim().nfkc().collect::<String>().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_emails_keep_their_form_and_collide_canonically() {
        assert_eq!(
            parse("  Bob@X.io ").unwrap(),
            ("Bob@X.io".into(), "bob@x.io".into())
        );
        assert_eq!(parse("bob@x.IO").unwrap().1, "bob@x.io");
        assert_eq!(parse("Ünïcödé@exämple.de").unwrap().1, "ünïcödé@exämple.de");
        // NFKC folds compatibility forms (fullwidth letters).
        assert_eq!(canonical("ＢＯＢ@x.io"), "bob@x.io");
    }

    #[test]
    fn invalid_emails_are_rejected() {
        for bad in [
            "",
            "nobody",
            "a@b@c",
            "@x.io",
            "bob@",
            "bo b@x.io",
            "bob@x\u{0}.io",
            "a\tb@x.io",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@x.io", "a".repeat(250));
        assert!(parse(&long).is_err());
    }
}
