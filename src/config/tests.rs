use super::*;

const SHIPPED: &str = include_str!("../../config.toml");

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text) {
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The shipped config with one line replaced (or appended when `from` is empty).
fn shipped_with(from: &str, to: &str) -> String {
    if from.is_empty() {
        format!("{SHIPPED}\n{to}\n")
    } else {
        assert!(SHIPPED.contains(from), "{from} not in shipped config");
        SHIPPED.replacen(from, to, 1)
    }
}

#[test]
fn the_shipped_config_is_valid_and_matches_the_documented_defaults() {
    let config = Config::parse(SHIPPED).expect("shipped config.toml must be valid");
    let defaults = Config::default();
    assert_eq!(config.server, defaults.server);
    assert_eq!(config.database, defaults.database);
    assert_eq!(config.tokens, defaults.tokens);
    assert_eq!(config.passwords, defaults.passwords);
    assert_eq!(config.revocation, defaults.revocation);
    assert_eq!(config.rate_limit, defaults.rate_limit);
    assert_eq!(config.identity_headers, defaults.identity_headers);
    assert_eq!(config.routes.len(), 3);
    assert_eq!(config.routes[0].roles, vec!["admin".to_string()]);
    assert_eq!(config.routes[2].auth, AuthMode::None);
}

#[test]
fn a_minimal_config_gets_every_default() {
    let config = Config::parse(
        "[[upstream]]\nname = \"a\"\naddrs = [\"127.0.0.1:1\"]\n[[route]]\nprefix = \"/\"\nupstream = \"a\"\n",
    )
    .unwrap();
    assert_eq!(config.tokens.access_ttl_secs, 900);
    assert_eq!(config.upstreams[0].connect_timeout_ms, 1000);
    assert_eq!(config.routes[0].auth, AuthMode::Required);
}

#[test]
fn an_unknown_key_is_an_error_naming_key_and_line() {
    let p = problems(&shipped_with("threads = 2 ", "thread = 2 "));
    assert_eq!(p.len(), 1);
    assert!(p[0].key.contains("thread"), "{:?}", p[0]);
    assert!(p[0].message.contains("unknown field"), "{:?}", p[0]);
    assert_eq!(p[0].line, Some(9));
}

#[test]
fn a_wrong_type_names_the_key() {
    let p = problems(&shipped_with("threads = 2 ", "threads = \"two\" "));
    assert_eq!(p[0].key, "server.threads");
    assert_eq!(p[0].line, Some(9));
}

#[test]
fn a_negative_ttl_is_an_error() {
    let p = problems(&shipped_with(
        "access_ttl_secs = 900",
        "access_ttl_secs = -5",
    ));
    assert_eq!(p[0].key, "tokens.access_ttl_secs");
}

#[test]
fn zero_threads_is_an_error() {
    let p = problems(&shipped_with("threads = 2 ", "threads = 0 "));
    assert_eq!(p[0].key, "server.threads");
    assert_eq!(p[0].line, Some(9));
}

#[test]
fn a_route_naming_a_missing_upstream_is_an_error() {
    let p = problems(&shipped_with(
        "prefix = \"/public/\"\nupstream = \"api\"",
        "prefix = \"/public/\"\nupstream = \"nope\"",
    ));
    assert_eq!(p[0].key, "route[2].upstream");
    assert!(p[0].message.contains("nope"));
    assert!(p[0].line.is_some());
}

#[test]
fn a_route_under_auth_is_an_error() {
    let p = problems(&shipped_with(
        "",
        "[[route]]\nprefix = \"/auth/x\"\nupstream = \"api\"",
    ));
    assert_eq!(p[0].key, "route[3].prefix");
    assert!(p[0].message.contains("/auth/"));
}

#[test]
fn a_duplicate_route_prefix_is_an_error() {
    let p = problems(&shipped_with(
        "",
        "[[route]]\nprefix = \"/api/\"\nupstream = \"api\"",
    ));
    assert_eq!(p[0].key, "route[3].prefix");
    assert!(p[0].message.contains("duplicate"));
}

#[test]
fn a_bad_listen_address_is_an_error() {
    let p = problems(&shipped_with(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"localhost-8080\"",
    ));
    assert_eq!(p[0].key, "server.listen");
}

#[test]
fn a_bad_upstream_address_is_an_error() {
    let p = problems(&shipped_with(
        "addrs = [\"127.0.0.1:9000\"]",
        "addrs = [\"127.0.0.1\"]",
    ));
    assert_eq!(p[0].key, "upstream[0].addrs");
}

#[test]
fn an_unknown_algorithm_is_an_error() {
    let p = problems(&shipped_with(
        "algorithm = \"EdDSA\"",
        "algorithm = \"none\"",
    ));
    assert_eq!(p[0].key, "tokens.algorithm");
}

#[test]
fn hs256_without_a_secret_env_is_an_error() {
    let p = problems(&shipped_with(
        "algorithm = \"EdDSA\"",
        "algorithm = \"HS256\"",
    ));
    assert_eq!(p[0].key, "tokens.algorithm");
}

#[test]
fn an_unknown_role_is_an_error() {
    let p = problems(&shipped_with("roles = [\"admin\"]", "roles = [\"root\"]"));
    assert_eq!(p[0].key, "route[0].roles");
}

#[test]
fn password_bounds_must_be_consistent() {
    let p = problems(&shipped_with("max_length = 1024", "max_length = 4"));
    assert_eq!(p[0].key, "passwords.max_length");
}

#[test]
fn a_bad_trusted_proxy_cidr_is_an_error() {
    let p = problems(&shipped_with(
        "trusted_proxies = []",
        "trusted_proxies = [\"10.0.0.0/99\"]",
    ));
    assert!(p[0].key.starts_with("server.trusted_proxies"), "{:?}", p[0]);
}

#[test]
fn a_database_url_of_another_kind_is_an_error() {
    let p = problems(&shipped_with(
        "url = \"sqlite://data/portcullis.db\"",
        "url = \"mysql://x\"",
    ));
    assert_eq!(p[0].key, "database.url");
}

#[test]
fn a_zero_acquire_timeout_is_an_error() {
    // 0 would fail every request that finds the pool busy, even for a moment.
    let p = problems(&shipped_with(
        "acquire_timeout_ms = 5000",
        "acquire_timeout_ms = 0",
    ));
    assert_eq!(p[0].key, "database.acquire_timeout_ms", "{p:?}");
}

#[test]
fn several_problems_are_all_reported() {
    let text =
        shipped_with("threads = 2 ", "threads = 0 ").replace("pool_size = 16", "pool_size = 0");
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn readme_documents_every_config_key() {
    let readme = include_str!("../../README.md");
    let config = Config::parse(SHIPPED).unwrap();
    let value = serde_json::to_value(&config).unwrap();
    let mut missing = Vec::new();
    for (table, body) in value.as_object().unwrap() {
        let (prefix, fields) = match body {
            serde_json::Value::Array(items) => match items.first() {
                Some(first) => (format!("{table}[]"), first.clone()),
                None => continue,
            },
            other => (table.clone(), other.clone()),
        };
        for key in fields.as_object().unwrap().keys() {
            let documented = format!("`{prefix}.{key}`");
            if !readme.contains(&documented) {
                missing.push(documented);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README's config reference misses {missing:?}"
    );
}

#[test]
fn a_bare_trusted_proxy_address_means_that_one_address() {
    let config = Config::parse(&shipped_with(
        "trusted_proxies = []",
        "trusted_proxies = [\"10.1.2.3\", \"fd00::/8\"]",
    ))
    .unwrap();
    let nets: Vec<String> = config
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, vec!["10.1.2.3/32", "fd00::/8"]);
}

#[test]
fn readme_documents_every_tls_key() {
    let readme = include_str!("../../README.md");
    let value = serde_json::to_value(Tls::default()).unwrap();
    let missing: Vec<String> = value
        .as_object()
        .unwrap()
        .keys()
        .map(|k| format!("`server.tls.{k}`"))
        .filter(|k| !readme.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README's config reference misses {missing:?}"
    );
}

const TLS: &str = "[server.tls]\ncerts = [ { cert = \"certs/a.pem\", key = \"certs/a.key\" } ]";

#[test]
fn a_tls_table_gets_the_documented_defaults() {
    let config = Config::parse(&shipped_with("", TLS)).unwrap();
    let tls = config.server.tls.unwrap();
    assert_eq!(tls.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(tls.certs[0].key, "certs/a.key");
    assert_eq!(tls.min_version, TlsVersion::V1_2);
    assert!(tls.http2);
    assert!(!tls.redirect_http);
    assert_eq!(tls.hsts_max_age_secs, 0);
    assert!(Config::parse(SHIPPED).unwrap().server.tls.is_none());
}

#[test]
fn min_version_accepts_only_1_2_and_1_3() {
    let ok = Config::parse(&shipped_with("", &format!("{TLS}\nmin_version = \"1.3\"")));
    assert_eq!(
        ok.unwrap().server.tls.unwrap().min_version,
        TlsVersion::V1_3
    );
    let p = problems(&shipped_with("", &format!("{TLS}\nmin_version = \"1.1\"")));
    assert_eq!(p[0].key, "server.tls.min_version", "{p:?}");
}

#[test]
fn a_tls_table_without_certificates_is_an_error() {
    let p = problems(&shipped_with("", "[server.tls]\nlisten = \"0.0.0.0:8443\""));
    assert_eq!(p[0].key, "server.tls.certs", "{p:?}");
    let p = problems(&shipped_with(
        "",
        "[server.tls]\ncerts = [ { cert = \"\", key = \"k\" } ]",
    ));
    assert_eq!(p[0].key, "server.tls.certs[0].cert", "{p:?}");
    assert!(p[0].line.is_some());
}

#[test]
fn the_tls_listener_must_not_share_a_port_with_another_listener() {
    let p = problems(&shipped_with(
        "",
        &format!("{TLS}\nlisten = \"0.0.0.0:8080\""),
    ));
    assert_eq!(p[0].key, "server.tls.listen", "{p:?}");
    assert!(p[0].message.contains("server.listen"), "{p:?}");
}

#[test]
fn an_unknown_tls_key_is_an_error() {
    let p = problems(&shipped_with("", &format!("{TLS}\nhsts = 5")));
    assert!(p[0].key.contains("hsts"), "{p:?}");
    let p = problems(&shipped_with(
        "",
        "[server.tls]\ncerts = [ { cert = \"a\", key = \"b\", chain = \"c\" } ]",
    ));
    assert!(p[0].message.contains("unknown field"), "{p:?}");
}

#[test]
fn a_problem_found_outside_config_is_located_by_its_key() {
    let dir = std::env::temp_dir().join(format!("pc-locate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let text = shipped_with(
        "",
        "[server.tls]\ncerts = [\n  { cert = \"a\", key = \"b\" },\n  { cert = \"c\", key = \"d\" },\n]",
    );
    std::fs::write(&path, &text).unwrap();
    let p = Problem::located(&path, "server.tls.certs[1].key".into(), "x".into());
    let expected = text
        .lines()
        .position(|l| l.contains("cert = \"c\""))
        .unwrap()
        + 1;
    assert_eq!(p.line, Some(expected));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_and_audit_keys_are_validated() {
    let config = Config::parse(SHIPPED).unwrap();
    assert_eq!(config.log, Log::default());
    assert_eq!(config.audit.retention_days, 365);
    let json = Config::parse(&shipped_with("format = \"text\"", "format = \"json\"")).unwrap();
    assert_eq!(json.log.format, LogFormat::Json);
    let ok = shipped_with(
        "level = \"info\"",
        "level = \"info,pingora_core=warn,portcullis::auth=debug\"",
    );
    assert!(Config::parse(&ok).is_ok());
    for (from, to, key) in [
        (
            "access_log_sample = 1.0",
            "access_log_sample = 1.5",
            "log.access_log_sample",
        ),
        (
            "access_log_sample = 1.0",
            "access_log_sample = -0.1",
            "log.access_log_sample",
        ),
        ("level = \"info\"", "level = \"info,x=loud\"", "log.level"),
        ("level = \"info\"", "level = \"\"", "log.level"),
        (
            "retention_days = 365",
            "retention_days = 0",
            "audit.retention_days",
        ),
        ("format = \"text\"", "format = \"xml\"", "log.format"),
    ] {
        let found = problems(&shipped_with(from, to));
        assert!(found.iter().any(|p| p.key == key), "{to}: {found:?}");
    }
}
