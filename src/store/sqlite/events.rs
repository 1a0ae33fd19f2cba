//! The revocation log: SQLite's stand-in for NOTIFY. A revocation appends a row in the
//! transaction that makes it; the gateway reads what follows the last row it saw, four times
//! a second, so a revocation made by a CLI verb beside it is enforced within about 250 ms.

use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, params};

use super::{Sqlite, micros};
use crate::store::{RevocationEvent, StoreError};

/// How often the gateway reads the log.
const POLL: Duration = Duration::from_millis(250);

/// How long a logged revocation is kept (far longer than any poll gap).
const KEEP: chrono::Duration = chrono::Duration::minutes(10);

/// Appends a revocation to the log (inside the caller's transaction).
pub(super) fn announce(
    c: &Connection,
    event: RevocationEvent,
) -> Result<RevocationEvent, StoreError> {
    c.execute(
        "INSERT INTO revocation_log (payload, at) VALUES (?1, ?2)",
        params![event.to_payload(), micros(Utc::now())],
    )?;
    Ok(event)
}

impl Sqlite {
    /// Reads the revocation log forever. `All` first, then each event logged after the start;
    /// after a failed read, `All` again once reads work (what was missed is unknown).
    pub(in crate::store) async fn watch_revocations<F>(&self, on_event: F)
    where
        F: Fn(RevocationEvent) + Send + Sync,
    {
        let mut last: Option<i64> = None;
        let mut pruned = std::time::Instant::now();
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let after = last;
            let prune = pruned.elapsed() > Duration::from_secs(60);
            let read = move |c: &mut rusqlite::Connection| {
                if prune {
                    c.execute(
                        "DELETE FROM revocation_log WHERE at < ?1",
                        [micros(Utc::now() - KEEP)],
                    )?;
                }
                let Some(after) = after else {
                    let top: i64 = c.query_row(
                        "SELECT coalesce(max(seq), 0) FROM revocation_log",
                        [],
                        |r| r.get(0),
                    )?;
                    return Ok((top, Vec::new()));
                };
                let mut stmt = c.prepare_cached(
                    "SELECT seq, payload FROM revocation_log WHERE seq > ?1 ORDER BY seq",
                )?;
                let rows = stmt
                    .query_map([after], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let top = rows.last().map_or(after, |(seq, _)| *seq);
                Ok((top, rows))
            };
            // Pruning deletes: it waits its turn among this process's writers.
            let read = if prune {
                self.write(read).await
            } else {
                self.run(read).await
            };
            if prune {
                pruned = std::time::Instant::now();
            }
            match read {
                Ok((top, rows)) => {
                    if last.is_none() {
                        tracing::info!("reading the revocation log");
                        on_event(RevocationEvent::All);
                    }
                    for (_, payload) in rows {
                        on_event(RevocationEvent::from_payload(&payload));
                    }
                    last = Some(top);
                }
                Err(e) => {
                    if last.is_some() {
                        tracing::warn!(error = %e, "reading the revocation log failed; retrying");
                    }
                    last = None;
                }
            }
        }
    }
}
