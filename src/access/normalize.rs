//! Path normalization (API.md §4.4): the route is matched on, and the upstream receives, the
//! same normalized path, so `/public/../api/admin` can never slip past an admin rule.

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

/// Normalizes a request path (without the query): decodes percent-encoded unreserved
/// characters, removes `.` and `..` segments, collapses `//`. Other percent-encodings are kept
/// (upper-cased), so the upstream sees exactly what was authorized.
pub fn normalize(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Pass 1: percent-decoding of unreserved characters, character checks.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadPercent);
                };
                let v = h * 16 + l;
                if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                    return Err(PathError::Forbidden);
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
            _ if b < 0x20 || b == 0x7f => return Err(PathError::Forbidden),
            _ => {
                // Copy one UTF-8 character (or byte run) verbatim.
                let start = i;
                i += 1;
                while i < bytes.len()
                    && !matches!(bytes[i], b'%' | b'\\')
                    && bytes[i] >= 0x20
                    && bytes[i] != 0x7f
                {
                    i += 1;
                }
                decoded.push_str(&path[start..i]);
                continue;
            }
        }
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
        for p in ["/", "/api/x", "/api/x/", "/a/b;c"] {
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
        assert_eq!(normalize("/public/..;/api"), Err(PathError::DotParameter));
        assert_eq!(normalize("/public/.;x/api"), Err(PathError::DotParameter));
        assert_eq!(normalize("/public/..%3b/api"), Err(PathError::DotParameter));
        assert_eq!(
            normalize("/public/%2E%2E%3B/api"),
            Err(PathError::DotParameter)
        );
        assert_eq!(normalize("/public/.%3Bx/api"), Err(PathError::DotParameter));
        assert_eq!(normalize("/public/a%3B/api").unwrap(), "/public/a%3B/api");
        assert_eq!(normalize("api"), Err(PathError::NotAbsolute));
    }
}
