//! Path normalization (docs/api.md, "Path normalization"): the route is matched on, and the upstream receives, the
//! same normalized path, so `/public/../api/admin` can never slip past an admin rule.
//!
//! The gateway is at least as strict as the backends behind it read paths (Spring's
//! StrictHttpFirewall is the model): anything a common backend would resolve further than we
//! do — `;params`, double encoding, overlong UTF-8 — is refused rather than forwarded.

/// Why a path was refused (answered 400, never forwarded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("the path has invalid percent-encoding")]
    BadPercent,
    /// Encoded `/` or `\`, a raw `\`, NUL or another control character.
    #[error("the path contains a forbidden character")]
    Forbidden,
    /// `..` would climb above the root.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// A segment starting with `..;` or `.;` (path-parameter tricks).
    #[error("the path has a dot segment with parameters")]
    DotParameter,
    /// `;` or `%3B`: Java backends strip `;params`, so `/api/admin;/x` reads as `/api/admin/x`.
    #[error("the path contains a path parameter (';')")]
    PathParameter,
    /// `%25` followed by two hex digits: a backend that decodes twice sees another path.
    #[error("the path is percent-encoded twice")]
    DoubleEncoding,
    /// Percent-encoded bytes that are not UTF-8 (overlong forms such as `%C0%AE` included).
    #[error("the path's percent-encoded bytes are not valid UTF-8")]
    BadUtf8,
}

/// What the path rules allow beyond the strict default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathPolicy {
    /// `server.allow_path_parameters`: let `;` through (dot-segment tricks stay refused).
    pub allow_path_parameters: bool,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `s` holds `%25` followed by two hex digits: what a backend decoding twice reads as
/// another escape.
fn double_encoded(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(5).any(|w| {
        w[0] == b'%' && w[1] == b'2' && w[2] == b'5' && hex(w[3]).is_some() && hex(w[4]).is_some()
    })
}

/// Normalizes a request path (without the query) under the strict default policy.
pub fn normalize(path: &str) -> Result<String, PathError> {
    normalize_with(path, PathPolicy::default())
}

/// Percent-decodes `%XX` at `bytes[i]`, if well-formed.
fn escape_at(bytes: &[u8], i: usize) -> Result<(u8, u8), PathError> {
    match (
        bytes.get(i + 1).copied().and_then(hex),
        bytes.get(i + 2).copied().and_then(hex),
    ) {
        (Some(h), Some(l)) => Ok((h, l)),
        _ => Err(PathError::BadPercent),
    }
}

/// Checks that a run of consecutive escapes decodes to UTF-8; `run` holds the decoded bytes.
/// Raw characters around a run are UTF-8 already, so each run must be complete on its own.
fn check_escape_run(run: &mut Vec<u8>) -> Result<(), PathError> {
    let result = match std::str::from_utf8(run) {
        Ok(text) if text.chars().any(char::is_control) => Err(PathError::Forbidden),
        Ok(_) => Ok(()),
        Err(_) => Err(PathError::BadUtf8),
    };
    run.clear();
    result
}

/// A C1 control character (U+0080–U+009F, UTF-8 `C2 80`–`C2 9F`) starts at `bytes[i]`: some
/// backends read U+0085 as a line break.
fn c1_control_at(bytes: &[u8], i: usize) -> bool {
    bytes[i] == 0xC2 && bytes.get(i + 1).is_some_and(|b| (0x80..=0x9F).contains(b))
}

/// Normalizes a request path (without the query): decodes percent-encoded unreserved
/// characters, removes `.` and `..` segments, collapses `//`. Other percent-encodings are kept
/// (upper-cased), so the upstream sees exactly what was authorized.
pub fn normalize_with(path: &str, policy: PathPolicy) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Pass 1: percent-decoding of unreserved characters, character checks.
    let mut decoded = String::with_capacity(path.len());
    // Decoded non-ASCII bytes of the current run of escapes (allocated only if there are any).
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' && !run.is_empty() {
            check_escape_run(&mut run)?;
        }
        match b {
            b'%' => {
                let (h, l) = escape_at(bytes, i)?;
                let v = h * 16 + l;
                if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                    return Err(PathError::Forbidden);
                }
                if v == b';' && !policy.allow_path_parameters {
                    return Err(PathError::PathParameter);
                }
                if v >= 0x80 || !run.is_empty() {
                    run.push(v);
                }
                if is_unreserved(v) {
                    decoded.push(v as char);
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    decoded.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Forbidden),
            b';' if !policy.allow_path_parameters => return Err(PathError::PathParameter),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::Forbidden),
            _ => {
                // Copy one UTF-8 character (or byte run) verbatim.
                let start = i;
                if c1_control_at(bytes, i) {
                    return Err(PathError::Forbidden);
                }
                i += 1;
                while i < bytes.len()
                    && !matches!(bytes[i], b'%' | b'\\' | b';')
                    && bytes[i] >= 0x20
                    && bytes[i] != 0x7f
                {
                    if c1_control_at(bytes, i) {
                        return Err(PathError::Forbidden);
                    }
                    i += 1;
                }
                decoded.push_str(&path[start..i]);
                continue;
            }
        }
    }
    if !run.is_empty() {
        check_escape_run(&mut run)?;
    }
    // Decoding unreserved escapes can complete a double encoding (`%25e%45` → `%25eE`):
    // judge the decoded form too.
    if decoded.contains("%25") && double_encoded(&decoded) {
        return Err(PathError::DoubleEncoding);
    }
    // Pass 2: dot segments and empty segments.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = decoded.ends_with('/');
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.into_iter().enumerate() {
        // Also with the `;` percent-encoded (pass 1 upper-cases escapes): upstreams that decode
        // before stripping path parameters would read `..%3B` as `..;`, i.e. `..`.
        if seg.starts_with("..;")
            || seg.starts_with(".;")
            || seg.starts_with("..%3B")
            || seg.starts_with(".%3B")
        {
            return Err(PathError::DotParameter);
        }
        match seg {
            "" => {}
            "." => {
                if n == last {
                    trailing_slash = true;
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if n == last {
                    trailing_slash = true;
                }
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || trailing_slash {
        result.push('/');
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_are_unchanged() {
        for p in ["/", "/api/x", "/api/x/", "/caf\u{e9}/x"] {
            assert_eq!(normalize(p).unwrap(), p);
        }
    }

    #[test]
    fn dot_segments_and_double_slashes_are_resolved() {
        assert_eq!(normalize("/public/../api/admin/x").unwrap(), "/api/admin/x");
        assert_eq!(normalize("//api//admin/").unwrap(), "/api/admin/");
        assert_eq!(normalize("/api/./x").unwrap(), "/api/x");
        assert_eq!(normalize("/api/x/..").unwrap(), "/api/");
        assert_eq!(normalize("/api/x/.").unwrap(), "/api/x/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept() {
        assert_eq!(normalize("/public/%2e%2e/api/admin").unwrap(), "/api/admin");
        assert_eq!(normalize("/%61pi/%7Euser").unwrap(), "/api/~user");
        assert_eq!(normalize("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(normalize("/api%2Fadmin"), Err(PathError::Forbidden));
        assert_eq!(normalize("/api%2fadmin"), Err(PathError::Forbidden));
        assert_eq!(normalize("/api%5cadmin"), Err(PathError::Forbidden));
        assert_eq!(normalize("/api\\admin"), Err(PathError::Forbidden));
        assert_eq!(normalize("/api%00"), Err(PathError::Forbidden));
        assert_eq!(normalize("/api%0a"), Err(PathError::Forbidden));
        assert_eq!(normalize("/api\u{1}"), Err(PathError::Forbidden));
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercent));
        assert_eq!(normalize("/a%4"), Err(PathError::BadPercent));
        assert_eq!(normalize("/public/..;/api"), Err(PathError::PathParameter));
        assert_eq!(normalize("/public/.;x/api"), Err(PathError::PathParameter));
        assert_eq!(
            normalize("/public/..%3b/api"),
            Err(PathError::PathParameter)
        );
        assert_eq!(
            normalize("/public/%2E%2E%3B/api"),
            Err(PathError::PathParameter)
        );
        assert_eq!(
            normalize("/public/.%3Bx/api"),
            Err(PathError::PathParameter)
        );
        assert_eq!(normalize("api"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn paths_a_backend_would_read_further_are_refused() {
        use PathError::*;
        for (path, why) in [
            ("/api/admin;/secret", PathParameter),
            ("/api/admin;jsessionid=1", PathParameter),
            ("/public/a%3B/api", PathParameter),
            ("/public/a%3b/api", PathParameter),
            ("/api/%2561dmin/x", DoubleEncoding),
            ("/public/%252e%252e/api/x", DoubleEncoding),
            ("/public/%252F", DoubleEncoding),
            ("/public/%C0%AE%C0%AE/api", BadUtf8),
            ("/public/%C0%AE", BadUtf8),
            ("/x/%E0%80%AE", BadUtf8),
            ("/x/%ED%A0%80", BadUtf8),
            ("/x/%FF", BadUtf8),
            ("/x/%C3", BadUtf8),
            ("/x/%C3/%A9", BadUtf8),
            ("/x/\u{e9}%A9", BadUtf8),
            ("/x/%41%A9", BadUtf8),
            // Found by fuzzing: a raw C1 control (U+009A), and its encoded forms.
            ("/x/\u{9a}/y", Forbidden),
            ("/x/a\u{85}", Forbidden),
            ("/x/%C2%85", Forbidden),
            // Found by fuzzing: decoding `%45` completes `%25eE`.
            ("/a/%25e%45/x", DoubleEncoding),
            ("/a/%25%45%45", DoubleEncoding),
        ] {
            assert_eq!(normalize(path), Err(why), "{path}");
        }
        // A lone `%25` (an encoded percent sign) is fine, and so is valid encoded UTF-8.
        assert_eq!(normalize("/a/100%25").unwrap(), "/a/100%25");
        assert_eq!(normalize("/a/%25zz").unwrap(), "/a/%25zz");
        assert_eq!(
            normalize("/x/%C3%A9%E2%82%AC").unwrap(),
            "/x/%C3%A9%E2%82%AC"
        );
        assert_eq!(normalize("/x/%e2%82%ac-%41").unwrap(), "/x/%E2%82%AC-A");
    }

    #[test]
    fn path_parameters_pass_only_when_allowed_and_never_with_dot_segments() {
        let allow = PathPolicy {
            allow_path_parameters: true,
        };
        assert_eq!(normalize_with("/a/b;c", allow).unwrap(), "/a/b;c");
        assert_eq!(
            normalize_with("/public/a%3B/api", allow).unwrap(),
            "/public/a%3B/api"
        );
        assert_eq!(
            normalize_with("/public/..;/api", allow),
            Err(PathError::DotParameter)
        );
        assert_eq!(
            normalize_with("/public/..%3b/api", allow),
            Err(PathError::DotParameter)
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Path-ish input: the characters that matter to normalization, escapes included.
        fn pathish() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just(";".to_string()),
                Just("\\".to_string()),
                Just("%".to_string()),
                "[a-zA-Z0-9_~-]{1,3}",
                "%[0-9a-fA-F]{2}",
                "%25[0-9a-fA-F]{2}",
                Just("%2e".to_string()),
                Just("%25".to_string()),
                Just("%2F".to_string()),
                Just("%C0%AE".to_string()),
                Just("\u{e9}".to_string()),
                Just("\u{1}".to_string()),
                Just("\u{85}".to_string()),
            ];
            proptest::collection::vec(piece, 0..24).prop_map(|v| format!("/{}", v.concat()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn a_normalized_path_is_canonical_and_normalizes_to_itself(raw in pathish()) {
                if let Ok(p) = normalize(&raw) {
                    prop_assert!(p.starts_with('/'));
                    prop_assert!(!p.contains("//"), "{p}");
                    prop_assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
                    let upper = p.to_ascii_uppercase();
                    prop_assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{p}");
                    prop_assert!(!p.contains('\\') && !p.contains(';'), "{p}");
                    prop_assert!(!p.chars().any(|c| c.is_control()), "{p}");
                    prop_assert!(!upper.contains("%2E"), "{p}");
                    // Nothing a backend that decodes twice would read as another escape.
                    let double = upper.match_indices("%25").any(|(i, _)| {
                        upper.as_bytes().get(i + 3..i + 5).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
                    });
                    prop_assert!(!double, "{p}");
                    prop_assert_eq!(normalize(&p), Ok(p.clone()));
                }
            }

            #[test]
            fn normalization_never_panics_on_any_string(raw in "\\PC*") {
                let _ = normalize(&raw);
                let _ = normalize_with(&raw, PathPolicy { allow_path_parameters: true });
            }
        }
    }
}
