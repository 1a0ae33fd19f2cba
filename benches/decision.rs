//! Micro-benchmarks of the proxy hot path: token verification per algorithm (cold and through
//! the verified-token cache), route matching with 10 and 1,000 routes, a revocation-cache hit,
//! and the whole per-request decision. Needs PostgreSQL (DATABASE_URL, default local) only to
//! create one session whose status then stays cached.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use uuid::Uuid;

use portcullis::access::{Authorizer, RevocationCache, Routes, bearer, normalize};
use portcullis::config::{Algorithm, AuthMode, OnDbError, Route, Tokens};
use portcullis::model::{Role, User};
use portcullis::store::{NewSession, Store};
use portcullis::tokens::TokenService;

fn token_service(alg: Algorithm, dir: &std::path::Path) -> TokenService {
    // SAFETY: set before any thread reads the environment.
    unsafe {
        std::env::set_var(
            "PORTCULLIS_BENCH_HS256",
            "bench-secret-0123456789abcdef0123456789",
        )
    };
    TokenService::new(&Tokens {
        algorithm: alg,
        keys_dir: dir.join(alg.as_str()).display().to_string(),
        hs256_secret_env: (alg == Algorithm::HS256).then(|| "PORTCULLIS_BENCH_HS256".to_string()),
        ..Tokens::default()
    })
    .expect("token service")
}

fn user() -> User {
    User {
        id: Uuid::new_v4(),
        email: "bench@example.com".into(),
        role: Role::User,
        is_active: true,
        created_at: chrono::Utc::now(),
    }
}

fn routes(n: usize) -> Routes {
    let route = |prefix: String| Route {
        prefix,
        upstream: "api".into(),
        auth: AuthMode::Required,
        roles: vec![],
        methods: vec![],
        host: None,
        strip_prefix: false,
        forward_token: false,
        case_sensitive: false,
        websocket_idle_timeout_secs: 300,
        mfa: false,
        max_auth_age_secs: None,
    };
    let mut v: Vec<Route> = (0..n).map(|i| route(format!("/svc{i}/v1/"))).collect();
    v.push(route("/api/".into()));
    Routes::new(&v)
}

fn verification(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("verify");
    for alg in [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::HS256,
    ] {
        let svc = token_service(alg, dir.path());
        let token = svc
            .issue(
                &user(),
                Uuid::new_v4(),
                &portcullis::model::Authentication::password(),
            )
            .expect("issue");
        group.bench_function(format!("{}/cold", alg.as_str()), |b| {
            b.iter(|| svc.verify_uncached(black_box(&token)).expect("valid"))
        });
        svc.verify(&token).expect("valid");
        group.bench_function(format!("{}/cached", alg.as_str()), |b| {
            b.iter(|| svc.verify(black_box(&token)).expect("valid"))
        });
    }
    group.finish();
}

fn route_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10, 1000] {
        let table = routes(n);
        group.bench_function(format!("{n}_routes"), |b| {
            b.iter(|| {
                table
                    .find(
                        Some("localhost:8080"),
                        &Method::GET,
                        black_box("/api/users/42"),
                    )
                    .expect("route")
            })
        });
    }
    group.bench_function("normalize", |b| {
        b.iter(|| normalize(black_box("/api/users/42/profile")).expect("normal"))
    });
    group.finish();
}

fn with_database(c: &mut Criterion) {
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/portcullis_bench".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Arc::new(token_service(Algorithm::EdDSA, dir.path()));
    let (store, user, sid) = rt.block_on(async {
        portcullis::store::ensure_database(&url)
            .await
            .expect("PostgreSQL must be running");
        portcullis::store::migrate(&url).await.expect("migrate");
        let store = Store::new(&url, 2).expect("store");
        let email = format!("bench-{}@example.com", Uuid::new_v4());
        let user = store
            .create_user(&email, &email, None, Role::User)
            .await
            .expect("user");
        let sid = store
            .create_session(NewSession {
                user_id: user.id,
                secret: &[7; 32],
                token_hash: &rand::random::<[u8; 32]>(),
                expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
                user_agent: None,
                ip: None,
                auth: &portcullis::model::Authentication::password(),
            })
            .await
            .expect("session");
        (store, user, sid)
    });
    let cache = Arc::new(RevocationCache::new(
        store,
        100_000,
        Duration::from_secs(3600),
    ));
    rt.block_on(cache.status(sid)).expect("prime");
    c.bench_function("revocation_cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { cache.status(black_box(sid)).await.expect("hit") })
    });

    let authorizer = Authorizer::new(tokens.clone(), cache.clone(), OnDbError::Deny);
    let token = tokens
        .issue(&user, sid, &portcullis::model::Authentication::password())
        .expect("issue");
    let header = format!("Bearer {token}");
    let table = routes(10);
    c.bench_function("decision/protected_route", |b| {
        b.to_async(&rt).iter(|| async {
            let path = normalize(black_box("/api/users/42")).expect("path");
            let route = table
                .find(Some("localhost"), &Method::GET, &path)
                .expect("route");
            let token = bearer(std::iter::once(header.as_bytes())).expect("one header");
            authorizer.authorize(route, token).await.expect("allowed")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = verification, route_matching, with_database
}
criterion_main!(benches);
