//! `/auth` JSON bodies on any bytes: a typed value or a 400 with a sentence, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::auth_api::parse_json;
use serde::Deserialize;

/// The shapes the endpoints read: strings, optional enum-like strings and booleans.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Body {
    email: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    is_active: Option<bool>,
}

fuzz_target!(|data: &[u8]| {
    for result in [
        parse_json::<Body>(data).err(),
        parse_json::<serde_json::Value>(data).err(),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(result.status, 400);
        assert!(!result.message.is_empty());
    }
});
