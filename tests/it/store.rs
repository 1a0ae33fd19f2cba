//! The store's contract, driven through `portcullis::store::Store` directly on this binary's
//! store: what both backends must do the same way (unique names, single use, races between
//! processes, revocations reaching the gateway's feed, time round trips).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Duration as Age, Utc};
use portcullis::model::{AuditEvent, AuditKind, Authentication, Role};
use portcullis::store::{
    AdminUpdate, AdminUpdateOutcome, AuditQuery, NewSession, OidcState, RefreshOutcome,
    RevocationEvent, Store, StoreError, Successor,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::harness::*;

/// Two handles on one fresh database, as two processes would have.
async fn two_handles() -> (Store, Store) {
    let url = fresh_db().await;
    (Store::new(&url, 4).unwrap(), Store::new(&url, 4).unwrap())
}

fn event(kind: AuditKind, user: Uuid) -> AuditEvent {
    AuditEvent {
        kind,
        user_id: Some(user),
        actor_id: None,
        client_ip: Some("10.1.2.3".parse().unwrap()),
        user_agent: Some("store-test".into()),
        request_id: None,
        detail: serde_json::json!({"n": 1}),
    }
}

fn successor(secret: &[u8], parent: &[u8]) -> Successor {
    let token = hex::encode(
        Sha256::new_with_prefix(secret)
            .chain_update(parent)
            .finalize(),
    );
    Successor {
        hash: Sha256::digest(token.as_bytes()).to_vec(),
        token,
    }
}

async fn session(store: &Store, user: Uuid, first: &str) -> Uuid {
    store
        .create_session(NewSession {
            user_id: user,
            secret: b"0123456789abcdef0123456789abcdef",
            token_hash: &Sha256::digest(first.as_bytes()),
            expires_at: Utc::now() + Age::days(1),
            user_agent: Some("ua"),
            ip: Some("127.0.0.1".parse().unwrap()),
            auth: &Authentication::password(),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_taken_email_is_the_same_named_constraint_on_every_store() {
    let (store, _) = two_handles().await;
    store
        .create_user("Bob@X.io", "bob@x.io", Some("$argon2id$x"), Role::User)
        .await
        .unwrap();
    let err = store
        .create_user("bob@x.io", "bob@x.io", None, Role::User)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unique(name) if name == "users_email_canonical_key"),
        "{err:?}"
    );
    // The pool serves on after the refused write.
    let found = store.find_user_by_email("bob@x.io").await.unwrap().unwrap();
    assert_eq!(found.user.email, "Bob@X.io");
    assert_eq!(found.hashed_password.as_deref(), Some("$argon2id$x"));
    let age = Utc::now() - found.user.created_at;
    assert!(age >= Age::zero() && age < Age::seconds(60), "{age:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_refreshing_one_token_get_one_successor_and_a_late_replay_revokes() {
    let (a, b) = two_handles().await;
    let user = a
        .create_user("r@x.io", "r@x.io", None, Role::User)
        .await
        .unwrap();
    let sid = session(&a, user.id, "first").await;
    let hash = Sha256::digest(b"first").to_vec();
    let reuse = |user, sid: Uuid| AuditEvent {
        detail: serde_json::json!({ "session": sid.to_string() }),
        ..event(AuditKind::RefreshReuseDetected, user)
    };
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let hash = hash.clone();
        tasks.push(tokio::spawn(async move {
            store
                .refresh(&hash, 5, |s| successor(s, b"first"), reuse)
                .await
                .unwrap()
        }));
    }
    let mut successors = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            RefreshOutcome::Rotated {
                successor,
                session_id,
                ..
            } => {
                assert_eq!(session_id, sid);
                successors.push(successor);
            }
            other => panic!("{other:?}"),
        }
    }
    successors.dedup();
    assert_eq!(successors.len(), 1, "{successors:?}");
    // Past the grace window (0 here), the parent is a stolen token: the session dies.
    let late = b
        .refresh(&hash, 0, |s| successor(s, b"first"), reuse)
        .await
        .unwrap();
    assert!(matches!(late, RefreshOutcome::Reused(_)), "{late:?}");
    let status = a.session_status(sid).await.unwrap().unwrap();
    assert!(status.revoked);
    let recorded = a
        .list_audit(&AuditQuery {
            event: Some("refresh_reuse_detected".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].client_ip.as_deref(), Some("10.1.2.3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_by_another_process_reaches_the_feed_within_a_second() {
    let (gateway, cli) = two_handles().await;
    let user = cli
        .create_user("f@x.io", "f@x.io", None, Role::User)
        .await
        .unwrap();
    let sid = session(&cli, user.id, "feed").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let feed = {
        let (gateway, seen) = (gateway.clone(), seen.clone());
        tokio::spawn(async move {
            gateway
                .watch_revocations(move |e| seen.lock().unwrap().push(e))
                .await
        })
    };
    // The feed starts with `All` (what came before is unknown).
    let started = eventually(Duration::from_secs(5), || async {
        seen.lock().unwrap().contains(&RevocationEvent::All)
    })
    .await;
    assert!(started.is_some());
    let revoked = cli
        .revoke_user_session(user.id, sid, &event(AuditKind::SessionRevoked, user.id))
        .await
        .unwrap();
    assert!(revoked);
    let took = eventually(Duration::from_secs(1), || async {
        seen.lock()
            .unwrap()
            .contains(&RevocationEvent::Session(sid))
    })
    .await;
    assert!(took.is_some(), "seen: {:?}", seen.lock().unwrap());
    cli.revoke_all_sessions(user.id, &event(AuditKind::LogoutAll, user.id))
        .await
        .unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        seen.lock()
            .unwrap()
            .contains(&RevocationEvent::User(user.id))
    })
    .await;
    assert!(took.is_some(), "seen: {:?}", seen.lock().unwrap());
    feed.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_racing_demotions_leave_one_active_admin() {
    let (a, b) = two_handles().await;
    let one = a
        .create_user("a1@x.io", "a1@x.io", None, Role::Admin)
        .await
        .unwrap();
    let two = a
        .create_user("a2@x.io", "a2@x.io", None, Role::Admin)
        .await
        .unwrap();
    let demote = AdminUpdate {
        role: Some(Role::User),
        is_active: None,
    };
    let (r1, r2) = tokio::join!(
        a.admin_update_user(one.id, demote, |_, _| Vec::new()),
        b.admin_update_user(two.id, demote, |_, _| Vec::new()),
    );
    let outcomes = [r1.unwrap(), r2.unwrap()];
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, AdminUpdateOutcome::LastAdmin))
        .count();
    assert_eq!(refused, 1, "{outcomes:?}");
    let admins = a
        .list_users(10, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.role == Role::Admin && u.is_active)
        .count();
    assert_eq!(admins, 1);
}

#[tokio::test]
async fn login_states_codes_and_the_acme_lease_are_single_use_across_processes() {
    let (a, b) = two_handles().await;
    let user = a
        .create_user("o@x.io", "o@x.io", None, Role::User)
        .await
        .unwrap();
    let state = OidcState {
        provider: "idp".into(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        redirect_to: "/x".into(),
        for_browser: true,
    };
    a.save_oidc_state(b"state-hash", &state).await.unwrap();
    assert!(
        b.take_oidc_state(b"state-hash", "other")
            .await
            .unwrap()
            .is_none(),
        "another provider's state"
    );
    a.save_oidc_state(b"state-2", &state).await.unwrap();
    let taken = b.take_oidc_state(b"state-2", "idp").await.unwrap().unwrap();
    assert!(taken.for_browser && taken.redirect_to == "/x");
    assert!(
        a.take_oidc_state(b"state-2", "idp")
            .await
            .unwrap()
            .is_none()
    );

    a.save_login_code(b"code", user.id, 60).await.unwrap();
    a.save_login_code(b"stale", user.id, -1).await.unwrap();
    assert_eq!(
        b.take_login_code(b"code").await.unwrap().map(|u| u.id),
        Some(user.id)
    );
    assert!(a.take_login_code(b"code").await.unwrap().is_none());
    assert!(a.take_login_code(b"stale").await.unwrap().is_none());

    assert!(a.take_acme_lease("gw.test", 60).await.unwrap());
    assert!(!b.take_acme_lease("gw.test", 60).await.unwrap());
    a.release_acme_lease("gw.test").await.unwrap();
    assert!(b.take_acme_lease("gw.test", 60).await.unwrap());
}

#[tokio::test]
async fn users_and_audit_page_by_their_keys_without_gaps_or_repeats() {
    let (store, _) = two_handles().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let e = format!("p{i}@x.io");
        ids.push(
            store
                .create_user(&e, &e, None, Role::User)
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_users(3, after).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|u| (u.created_at, u.id));
        seen.extend(page.into_iter().map(|u| u.id));
    }
    assert_eq!(seen, ids, "oldest first, each once");

    for id in &ids {
        store
            .record_audit(&event(AuditKind::Register, *id))
            .await
            .unwrap();
    }
    let first = store
        .list_audit(&AuditQuery {
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(first[0].user_id, Some(ids[6]), "newest first");
    let rest = store
        .list_audit(&AuditQuery {
            limit: 10,
            before_id: Some(first[3].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[2].user_id, Some(ids[0]));
    assert_eq!(rest[0].detail, serde_json::json!({"n": 1}));
    let gone = store
        .delete_audit_before(Utc::now() + Age::seconds(1))
        .await
        .unwrap();
    assert_eq!(gone, 7);
}
