//! The configuration file: its format (serde, unknown keys rejected) and the validated
//! [`Config`] the rest of the gateway is built from.
//!
//! This module imports nothing of ours, so every other layer can depend on it.

mod file;
mod validate;

use std::fmt;
use std::path::Path;

pub use file::*;

/// One problem found in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `route[2].upstream` or `server.threads`.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// Human sentence describing the problem.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Why a configuration could not be loaded: every problem found, not only the first.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path that was tried.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// A relative `sqlite://PATH` is relative to the config file's directory (so the gateway
/// finds the same file whatever directory it is started from); it becomes absolute.
fn resolve_sqlite(url: &str, config_path: &Path) -> String {
    match url.strip_prefix("sqlite://") {
        Some(p) if !p.is_empty() && !Path::new(p).is_absolute() => {
            let dir = config_path.parent().unwrap_or(Path::new(""));
            let joined = dir.join(p);
            let abs = std::path::absolute(&joined).unwrap_or(joined);
            format!("sqlite://{}", abs.display())
        }
        _ => url.to_string(),
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`; `DATABASE_URL` (when set) overrides
    /// `database.url` so the same file works on every machine.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text)?;
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.trim().is_empty()
        {
            config.database.url = url;
        }
        config.database.url = resolve_sqlite(&config.database.url, path);
        Ok(config)
    }

    /// Valid settings an operator should hear about: `check-config` prints them and `serve`
    /// logs them at WARN.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.server.admin_listen.ip().is_loopback() {
            w.push(format!(
                "server.admin_listen {} is not a loopback address: the admin listener has no \
                 authentication, so /metrics and /routes answer anyone who reaches it \
                 (bind it to 127.0.0.1 or firewall the port)",
                self.server.admin_listen
            ));
        }
        let local = self.server.listen.ip().is_loopback();
        if self.browser.enabled && self.server.tls.is_none() && !local {
            w.push(format!(
                "[browser] is on but server.listen {} serves plain http off loopback: browsers \
                 keep the Secure session cookies only over https (add [server.tls])",
                self.server.listen
            ));
        }
        if self.revocation.on_db_error == OnDbError::Allow {
            w.push(
                "revocation.on_db_error = \"allow\": tokens are accepted when their status \
                 cannot be checked"
                    .to_string(),
            );
        }
        w
    }

    /// Parses and validates configuration text (no environment overrides).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let start = e.span().map(|s| s.start);
            let named = key_from_toml_error(e.message());
            let located = start.and_then(|o| validate::Locator::new(text).key_at(o));
            let key = match (located, named) {
                (Some(path), Some(field)) if !path.ends_with(&field) => format!("{path}.{field}"),
                (Some(path), _) => path,
                (None, Some(field)) => field,
                (None, None) => "config".to_string(),
            };
            ConfigError::Invalid(vec![Problem {
                key,
                line: start.map(|o| line_of_offset(text, o)),
                message: e.message().trim().to_string(),
            }])
        })?;
        let problems = validate::validate(&config, text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl Problem {
    /// A problem found outside `config/` (a certificate file, say), located by its dotted key
    /// in the file at `path` so it reads like every other config problem.
    pub fn located(path: &Path, key: String, message: String) -> Problem {
        let line = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| validate::line_of_key(&text, &key));
        Problem { key, line, message }
    }
}

/// 1-based line number of a byte offset.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// serde's messages name the offending key in backticks for unknown fields; elsewhere the
/// line number is what locates the problem.
fn key_from_toml_error(message: &str) -> Option<String> {
    message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests;
