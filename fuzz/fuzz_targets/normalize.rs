//! Path normalization on any request target: never panics, and whatever it lets through is
//! canonical (no `//`, no dot segments, no encoded `/` or `\`, no `;` unless allowed, nothing a
//! second decode would read as another escape) and normalizes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::access::{PathPolicy, normalize_with};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for allow in [false, true] {
        let policy = PathPolicy {
            allow_path_parameters: allow,
        };
        let Ok(p) = normalize_with(path, policy) else {
            continue;
        };
        assert!(p.starts_with('/'), "{p}");
        assert!(!p.contains("//"), "{p}");
        assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
        let upper = p.to_ascii_uppercase();
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%2E"),
            "{p}"
        );
        assert!(!p.contains('\\') && !p.chars().any(char::is_control), "{p}");
        assert!(allow || !p.contains(';'), "{p}");
        let double = upper.match_indices("%25").any(|(i, _)| {
            upper
                .as_bytes()
                .get(i + 3..i + 5)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
        assert!(!double, "{p}");
        assert_eq!(normalize_with(&p, policy).as_deref(), Ok(p.as_str()));
    }
});
