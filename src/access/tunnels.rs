//! Open WebSocket tunnels by session. A token is checked once, at the handshake; a tunnel can
//! then live for hours. The same revocation notification that evicts a session from the cache
//! closes its tunnels here, on every instance, so a revoked session loses its sockets too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::store::RevocationEvent;
use crate::tokens::Claims;

/// Closes one tunnel; supplied by the proxy, which owns the sockets.
pub type Closer = Box<dyn Fn() + Send + Sync>;

struct Tunnel {
    claims: Arc<Claims>,
    close: Closer,
}

/// The registry of open tunnels.
#[derive(Default)]
pub struct Tunnels {
    open: Mutex<HashMap<u64, Tunnel>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("open", &self.len())
            .finish()
    }
}

/// Keeps a tunnel registered; dropping it (the request ended) deregisters it.
pub struct TunnelGuard {
    id: u64,
    tunnels: Arc<Tunnels>,
}

impl std::fmt::Debug for TunnelGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelGuard").field("id", &self.id).finish()
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.tunnels.open.lock() {
            open.remove(&self.id);
        }
    }
}

impl Tunnels {
    /// Registers an open tunnel of the session in `claims`.
    pub fn register(self: &Arc<Self>, claims: Arc<Claims>, close: Closer) -> TunnelGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, Tunnel { claims, close });
        }
        TunnelGuard {
            id,
            tunnels: self.clone(),
        }
    }

    /// Number of open tunnels.
    pub fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Whether no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every tunnel whose claims match `pred`; returns how many.
    pub fn close_where(&self, pred: impl Fn(&Claims) -> bool) -> usize {
        let Ok(open) = self.open.lock() else {
            return 0;
        };
        let mut closed = 0;
        for tunnel in open.values().filter(|t| pred(&t.claims)) {
            (tunnel.close)();
            closed += 1;
        }
        closed
    }

    /// The claims of open tunnels matching `pred` (to re-check their session).
    pub fn claims_where(&self, pred: impl Fn(&Claims) -> bool) -> Vec<Arc<Claims>> {
        self.open
            .lock()
            .map(|open| {
                open.values()
                    .filter(|t| pred(&t.claims))
                    .map(|t| t.claims.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tunnels whose session must be re-checked after `event`: a user event (role change,
    /// deactivation, logout-all, password change) or a missed-notification reset. A revoked
    /// session needs no re-check: `close_session` it.
    pub fn to_recheck(&self, event: &RevocationEvent) -> Vec<Arc<Claims>> {
        match event {
            RevocationEvent::Session(_) => Vec::new(),
            RevocationEvent::User(uid) => self.claims_where(|c| c.sub == *uid),
            RevocationEvent::All => self.claims_where(|_| true),
        }
    }

    /// Closes the tunnels of one session.
    pub fn close_session(&self, sid: Uuid) -> usize {
        self.close_where(|c| c.sid == sid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn claims(sub: Uuid, sid: Uuid) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub,
            role: crate::model::Role::User,
            sid,
            jti: Uuid::new_v4(),
            iat: 0,
            nbf: 0,
            exp: 0,
            email: "e@x.io".into(),
            acr: "aal1".into(),
            amr: vec!["pwd".into()],
            auth_time: 0,
        })
    }

    #[test]
    fn a_revoked_session_closes_its_tunnels_and_only_those() {
        let tunnels = Arc::new(Tunnels::default());
        let closed = Arc::new(AtomicUsize::new(0));
        let (user, sid, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let counter = |c: &Arc<AtomicUsize>| -> Closer {
            let c = c.clone();
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
        };
        let a = tunnels.register(claims(user, sid), counter(&closed));
        let b = tunnels.register(claims(user, sid), counter(&closed));
        let _c = tunnels.register(claims(user, other), counter(&closed));
        assert_eq!(tunnels.len(), 3);
        assert_eq!(tunnels.close_session(sid), 2);
        assert_eq!(closed.load(Ordering::SeqCst), 2);
        assert!(
            tunnels
                .to_recheck(&RevocationEvent::Session(sid))
                .is_empty()
        );
        assert_eq!(tunnels.to_recheck(&RevocationEvent::User(user)).len(), 3);
        assert!(tunnels.to_recheck(&RevocationEvent::User(other)).is_empty());
        drop(a);
        drop(b);
        assert_eq!(tunnels.len(), 1);
        assert_eq!(tunnels.to_recheck(&RevocationEvent::All).len(), 1);
    }
}
