//! Access-token verification on structured inputs: headers and claims with each field right or
//! wrong (algorithm, `typ`, `kid`, keys offered in the header, `iss`, `aud`, times), signed with
//! the gateway's real key or not, plus raw bytes. A token that verifies always has the pinned
//! algorithm, the real `kid`, no offered key, the configured `iss`/`aud`, valid times and a
//! real signature; nothing panics.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use portcullis::config::Tokens;
use portcullis::tokens::TokenService;
use serde_json::{Value, json};

const LEEWAY: i64 = 30;

struct Setup {
    service: TokenService,
    key: jsonwebtoken::EncodingKey,
    kid: String,
    _dir: std::path::PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-keys-{}", std::process::id()));
        let config = Tokens {
            keys_dir: dir.display().to_string(),
            leeway_secs: LEEWAY as u64,
            ..Tokens::default()
        };
        let service = TokenService::new(&config).expect("token service");
        let entry = std::fs::read_dir(&dir)
            .expect("keys dir")
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "pem"))
            .expect("a key file");
        let kid = entry
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let pem = std::fs::read(entry.path()).expect("key file");
        let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).expect("Ed25519 key");
        Setup {
            service,
            key,
            kid,
            _dir: dir,
        }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    alg: u8,
    typ: u8,
    kid: u8,
    key_offer: u8,
    iss_ok: bool,
    aud_ok: bool,
    sub_ok: bool,
    exp: i16,
    nbf: i16,
    iat: i16,
    real_signature: bool,
    raw: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let s = setup();
    // Raw bytes first: anything at all is refused without a panic.
    if let Ok(text) = std::str::from_utf8(&input.raw) {
        let _ = s.service.verify(text);
    }
    let algs = ["EdDSA", "ES256", "RS256", "HS256", "none", "NONE", "eddsa"];
    let alg = algs[input.alg as usize % algs.len()];
    let mut header = json!({ "alg": alg });
    match input.typ % 3 {
        0 => header["typ"] = json!("at+jwt"),
        1 => header["typ"] = json!("JWT"),
        _ => {}
    }
    match input.kid % 3 {
        0 => header["kid"] = json!(s.kid),
        1 => header["kid"] = json!("someone-elses-key"),
        _ => {}
    }
    let offers = ["", "jwk", "jku", "x5u", "x5c"];
    let offer = offers[input.key_offer as usize % offers.len()];
    if !offer.is_empty() {
        header[offer] = json!("https://evil.example/key");
    }
    let now = portcullis::tokens::now_secs();
    let claims: Value = json!({
        "iss": if input.iss_ok { "portcullis" } else { "evil" },
        "aud": if input.aud_ok { "portcullis" } else { "evil" },
        "sub": if input.sub_ok { "0193b0d2-6f3a-7c1e-9a2b-3c4d5e6f7a8b" } else { "nobody" },
        "role": "user",
        "sid": "0193b0d2-6f3a-7c1e-9a2b-3c4d5e6f7a8c",
        "jti": "0193b0d2-6f3a-7c1e-9a2b-3c4d5e6f7a8d",
        "iat": now + i64::from(input.iat),
        "nbf": now + i64::from(input.nbf),
        "exp": now + i64::from(input.exp),
        "email": "a@b.c",
    });
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = if input.real_signature {
        jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &s.key,
            jsonwebtoken::Algorithm::EdDSA,
        )
        .expect("sign")
    } else {
        B64.encode(&input.raw)
    };
    let token = format!("{signing_input}.{signature}");
    if let Ok(verified) = s.service.verify(&token) {
        assert_eq!(alg, "EdDSA", "{token}");
        assert!(
            input.kid % 3 == 0,
            "unknown or missing kid accepted: {token}"
        );
        assert!(
            offer.is_empty(),
            "key offered in the header accepted: {token}"
        );
        assert!(input.iss_ok && input.aud_ok && input.sub_ok, "{token}");
        assert!(input.real_signature, "forged signature accepted: {token}");
        assert_eq!(verified.iss, "portcullis");
        // Times, with two seconds of slack for the clock ticking during the check.
        assert!(
            i64::from(input.exp) >= -LEEWAY - 2,
            "expired accepted: {token}"
        );
        assert!(
            i64::from(input.nbf) <= LEEWAY + 2,
            "not yet valid accepted: {token}"
        );
        assert!(
            i64::from(input.iat) <= LEEWAY + 2,
            "future iat accepted: {token}"
        );
    }
});
