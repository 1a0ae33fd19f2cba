-- The audit trail (see the PostgreSQL migration of the same name). `detail` is JSON text.
CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       INTEGER NOT NULL,
    event      TEXT NOT NULL,
    user_id    BLOB,
    actor_id   BLOB,
    client_ip  TEXT,
    user_agent TEXT,
    request_id TEXT,
    detail     TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_events_user_idx ON audit_events (user_id, id DESC);
CREATE INDEX audit_events_event_idx ON audit_events (event, id DESC);
CREATE INDEX audit_events_time_idx ON audit_events (time);
