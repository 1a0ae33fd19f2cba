use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::Utc;

fn service(alg: Algorithm) -> (TokenService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Tokens {
        algorithm: alg,
        keys_dir: dir.path().display().to_string(),
        ..Tokens::default()
    };
    (TokenService::new(&config).unwrap(), dir)
}

fn user() -> User {
    User {
        id: Uuid::new_v4(),
        email: "a@b.c".into(),
        role: Role::User,
        is_active: true,
        created_at: Utc::now(),
    }
}

/// Re-signs `claims` with the service's own key but a hand-made header.
fn forge(svc: &TokenService, header: serde_json::Value, claims: &Claims) -> String {
    let h = B64.encode(header.to_string());
    let c = B64.encode(serde_json::to_string(claims).unwrap());
    let keys = svc.keys.load();
    let sig = jsonwebtoken::crypto::sign(
        format!("{h}.{c}").as_bytes(),
        &keys.signing_key,
        jwt_algorithm(keys.algorithm),
    )
    .unwrap();
    format!("{h}.{c}.{sig}")
}

#[test]
fn every_algorithm_issues_tokens_that_verify() {
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let (svc, _dir) = service(alg);
        let u = user();
        let sid = Uuid::new_v4();
        let token = svc.issue(&u, sid, &Authentication::password()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(
            header.kid.as_deref(),
            Some(svc.keys.load().signing_kid.as_str())
        );
        let claims = svc.verify(&token).unwrap();
        assert_eq!(claims.sub, u.id);
        assert_eq!(claims.sid, sid);
        assert_eq!(claims.exp - claims.iat, 900);
    }
}

#[test]
fn alg_none_and_a_foreign_algorithm_are_rejected() {
    let (svc, _dir) = service(Algorithm::EdDSA);
    let claims = svc
        .verify(
            &svc.issue(&user(), Uuid::new_v4(), &Authentication::password())
                .unwrap(),
        )
        .unwrap();
    let c = B64.encode(serde_json::to_string(&*claims).unwrap());
    for alg in ["none", "None", "NONE"] {
        let h = B64.encode(format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"x"}}"#));
        assert!(svc.verify(&format!("{h}.{c}.")).is_err());
    }
    let hs = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &*claims,
        &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert_eq!(svc.verify(&hs), Err(VerifyError::Algorithm));
}

#[test]
fn unknown_kids_and_embedded_keys_are_rejected() {
    let (svc, _dir) = service(Algorithm::EdDSA);
    let claims = svc
        .verify(
            &svc.issue(&user(), Uuid::new_v4(), &Authentication::password())
                .unwrap(),
        )
        .unwrap();
    let kid = svc.keys.load().signing_kid.clone();
    let t = forge(
        &svc,
        serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":"nope"}),
        &claims,
    );
    assert_eq!(svc.verify(&t), Err(VerifyError::UnknownKey));
    let t = forge(
        &svc,
        serde_json::json!({"alg":"EdDSA","typ":"at+jwt"}),
        &claims,
    );
    assert_eq!(svc.verify(&t), Err(VerifyError::UnknownKey));
    // Signed with the service's own key and otherwise the control `ok` below: the offered
    // key is the only defect, and it is named as the reason.
    let offers = [
        ("jwk", svc.jwks()["keys"][0].clone()),
        ("jku", serde_json::json!("http://evil/jwks.json")),
        ("x5u", serde_json::json!("http://evil/cert.pem")),
        ("x5c", serde_json::json!(["MIIBLjCB4aADAgECAhQ="])),
    ];
    for (field, offer) in offers {
        let mut header = serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":kid});
        header[field] = offer;
        let t = forge(&svc, header, &claims);
        assert_eq!(svc.verify(&t), Err(VerifyError::EmbeddedKey), "{field}");
    }
    let t = forge(
        &svc,
        serde_json::json!({"alg":"EdDSA","typ":"JWT","kid":kid}),
        &claims,
    );
    assert_eq!(svc.verify(&t), Err(VerifyError::Type));
    let ok = forge(
        &svc,
        serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":kid}),
        &claims,
    );
    assert!(svc.verify(&ok).is_ok());
}

#[test]
fn time_claims_are_checked_with_the_leeway() {
    let (svc, _dir) = service(Algorithm::EdDSA);
    let kid = svc.keys.load().signing_kid.clone();
    let header = serde_json::json!({"alg":"EdDSA","typ":"at+jwt","kid":kid});
    let base = (*svc
        .verify(
            &svc.issue(&user(), Uuid::new_v4(), &Authentication::password())
                .unwrap(),
        )
        .unwrap())
    .clone();
    let now = now_secs();
    let expired = Claims {
        exp: now - 31,
        ..base.clone()
    };
    assert_eq!(
        svc.verify(&forge(&svc, header.clone(), &expired)),
        Err(VerifyError::Expired)
    );
    let within = Claims {
        exp: now - 10,
        ..base.clone()
    };
    assert!(svc.verify(&forge(&svc, header.clone(), &within)).is_ok());
    let future_nbf = Claims {
        nbf: now + 60,
        ..base.clone()
    };
    assert_eq!(
        svc.verify(&forge(&svc, header.clone(), &future_nbf)),
        Err(VerifyError::NotYetValid)
    );
    let future_iat = Claims {
        iat: now + 60,
        ..base.clone()
    };
    assert_eq!(
        svc.verify(&forge(&svc, header.clone(), &future_iat)),
        Err(VerifyError::NotYetValid)
    );
    let wrong_aud = Claims {
        aud: "other".into(),
        ..base.clone()
    };
    assert_eq!(
        svc.verify(&forge(&svc, header.clone(), &wrong_aud)),
        Err(VerifyError::Audience)
    );
    let wrong_iss = Claims {
        iss: "other".into(),
        ..base
    };
    assert_eq!(
        svc.verify(&forge(&svc, header, &wrong_iss)),
        Err(VerifyError::Audience)
    );
}

#[test]
fn a_tampered_signature_is_rejected() {
    let (svc, _dir) = service(Algorithm::ES256);
    let token = svc
        .issue(&user(), Uuid::new_v4(), &Authentication::password())
        .unwrap();
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let mut sig = B64.decode(&parts[2]).unwrap();
    sig[5] ^= 1;
    parts[2] = B64.encode(sig);
    assert_eq!(svc.verify(&parts.join(".")), Err(VerifyError::Signature));
}

#[test]
fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
    let (svc, dir) = service(Algorithm::EdDSA);
    let old_kid = svc.keys.load().signing_kid.clone();
    let old = svc
        .issue(&user(), Uuid::new_v4(), &Authentication::password())
        .unwrap();
    let (new_kid, _) = generate_key(dir.path(), Algorithm::EdDSA).unwrap();
    svc.reload().unwrap();
    assert_eq!(svc.keys.load().signing_kid, new_kid);
    assert_ne!(old_kid, new_kid);
    assert!(svc.verify(&old).is_ok());
    let new = svc
        .issue(&user(), Uuid::new_v4(), &Authentication::password())
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid,
        Some(new_kid)
    );
    assert_eq!(svc.jwks()["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn hs256_tokens_carry_a_kid_and_need_a_long_secret() {
    // SAFETY: test-only env var names unique to this test.
    unsafe {
        std::env::set_var(
            "PORTCULLIS_TEST_HS_LONG",
            "0123456789abcdef0123456789abcdef",
        );
        std::env::set_var("PORTCULLIS_TEST_HS_SHORT", "short");
    }
    let cfg = |var: &str| Tokens {
        algorithm: Algorithm::HS256,
        hs256_secret_env: Some(var.into()),
        ..Tokens::default()
    };
    assert!(matches!(
        TokenService::new(&cfg("PORTCULLIS_TEST_HS_SHORT")),
        Err(KeyError::Secret(_))
    ));
    let svc = TokenService::new(&cfg("PORTCULLIS_TEST_HS_LONG")).unwrap();
    let token = svc
        .issue(&user(), Uuid::new_v4(), &Authentication::password())
        .unwrap();
    assert!(jsonwebtoken::decode_header(&token).unwrap().kid.is_some());
    assert!(svc.verify(&token).is_ok());
    assert_eq!(svc.jwks()["keys"].as_array().unwrap().len(), 0);
}

#[test]
fn a_new_keys_dir_is_owner_only_and_shared_writable_keys_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nested/keys");
    let (_, key) = generate_key(&dir, Algorithm::EdDSA).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&key), 0o600);
    let config = Tokens {
        keys_dir: dir.display().to_string(),
        ..Tokens::default()
    };
    assert!(TokenService::new(&config).is_ok());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = TokenService::new(&config).unwrap_err();
    assert!(
        matches!(&err, KeyError::Insecure(p, 0o666) if p.ends_with(".pem")),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = TokenService::new(&config).unwrap_err();
    assert!(matches!(&err, KeyError::Insecure(_, 0o777)), "{err}");
    assert!(matches!(
        generate_key(&dir, Algorithm::EdDSA),
        Err(KeyError::Insecure(..))
    ));
}

#[test]
fn a_cached_verification_never_skips_the_time_checks() {
    let (svc, _dir) = service(Algorithm::EdDSA);
    let token = svc
        .issue(&user(), Uuid::new_v4(), &Authentication::password())
        .unwrap();
    let claims = svc.verify(&token).unwrap();
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    assert!(
        svc.verified.contains_key(&digest),
        "the token was not cached"
    );
    // Take away the key that signed it, without clearing the cache: from here on only a cache
    // hit can accept the token.
    let (other, _other_dir) = service(Algorithm::EdDSA);
    svc.keys.store(other.keys.load_full());
    assert_eq!(svc.verify_uncached(&token), Err(VerifyError::UnknownKey));

    let leeway = svc.config.leeway_secs as i64;
    assert_eq!(
        svc.verify_at(&token, claims.exp + leeway - 1),
        Ok(claims.clone())
    );
    assert_eq!(
        svc.verify_at(&token, claims.exp + leeway),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        svc.verify_at(&token, claims.exp + 86_400),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        svc.verify_at(&token, claims.nbf - leeway - 1),
        Err(VerifyError::NotYetValid)
    );
    // Still cached: the refusals came from the cached entry's time checks.
    assert!(svc.verified.contains_key(&digest));
    assert_eq!(svc.verify(&token), Ok(claims));
}

#[test]
fn an_uncached_verification_checks_every_time_claim_at_the_given_time() {
    let (svc, _dir) = service(Algorithm::EdDSA);
    let token = svc
        .issue(&user(), Uuid::new_v4(), &Authentication::password())
        .unwrap();
    let claims = svc.verify_uncached(&token).unwrap();
    let leeway = svc.config.leeway_secs as i64;
    assert_eq!(
        svc.verify_at(&token, claims.exp + leeway),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        svc.verify_at(&token, claims.nbf.min(claims.iat) - leeway - 1),
        Err(VerifyError::NotYetValid)
    );
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    assert!(
        !svc.verified.contains_key(&digest),
        "a refused token was cached"
    );
    assert_eq!(
        svc.verify_at(&token, claims.exp + leeway - 1).as_deref(),
        Ok(&claims)
    );
}
