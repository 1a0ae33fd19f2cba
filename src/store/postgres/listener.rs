//! The dedicated LISTEN connection that keeps every instance's revocation cache coherent.

use std::time::Duration;

use tokio_postgres::AsyncMessage;

use super::REVOCATION_CHANNEL;
use crate::store::RevocationEvent;

/// Holds a LISTEN connection forever, reconnecting with backoff. `on_event` receives every
/// revocation, and `All` whenever a connection is (re-)established, since notifications sent
/// while disconnected are lost.
///
/// The backoff starts over after every connection that got as far as LISTEN: only failed
/// attempts in a row (the database down) slow the retries. Otherwise each lost connection —
/// a terminated backend, a failover — would wait longer than the last, and after a few the
/// reconnection (and with it the `All` that catches up on missed revocations) would take
/// more than the 1 s within which a revocation must reach every instance.
///
/// Losing the connection does not clear the cache: while the database is unreachable, cached
/// statuses (at most `cache_ttl_secs` old) are what keeps signed-in users served (docs/api.md, "Authentication and authorization"
/// item 7). What was missed meanwhile is dropped as soon as LISTEN is back.
pub async fn listen_for_revocations<F>(url: String, on_event: F)
where
    F: Fn(RevocationEvent) + Send + Sync,
{
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut listened = false;
        match listen_once(&url, &on_event, &mut listened).await {
            Ok(()) => tracing::warn!("revocation LISTEN connection closed; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "revocation LISTEN connection failed; retrying"),
        }
        if listened {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if backoff >= Duration::from_secs(2) {
            backoff = Duration::from_millis(500);
        }
    }
}

/// One LISTEN connection until it ends; sets `listened` once LISTEN has succeeded.
async fn listen_once<F>(
    url: &str,
    on_event: &F,
    listened: &mut bool,
) -> Result<(), tokio_postgres::Error>
where
    F: Fn(RevocationEvent),
{
    let target = match super::tls::target(url) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "revocation LISTEN connection: bad database.url");
            return Ok(());
        }
    };
    let (client, mut connection) = target.config.connect(target.tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n.payload().to_string())).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e));
                    break;
                }
                None => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {REVOCATION_CHANNEL}"))
        .await?;
    tracing::info!("listening for revocations");
    *listened = true;
    on_event(RevocationEvent::All);
    let result = loop {
        match rx.recv().await {
            Some(Ok(payload)) => on_event(RevocationEvent::from_payload(&payload)),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    driver.abort();
    drop(client);
    result
}
