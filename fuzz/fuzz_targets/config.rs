//! The config parser on any text: an error with located problems or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(config) => assert_eq!(Config::parse(text).ok(), Some(config)),
        Err(ConfigError::Invalid(problems)) => assert!(!problems.is_empty()),
        Err(_) => {}
    }
});
