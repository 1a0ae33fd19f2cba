-- The audit trail: who did what to which account, from where. Never a password, hash or
-- token: `detail` holds small, non-secret facts (old and new role, key id…).
CREATE TABLE audit_events (
    id         bigserial PRIMARY KEY,
    time       timestamptz NOT NULL DEFAULT now(),
    event      text NOT NULL,
    -- No foreign keys: the trail outlives the accounts it mentions.
    user_id    uuid,
    actor_id   uuid,
    client_ip  inet,
    user_agent text,
    request_id text,
    detail     jsonb NOT NULL DEFAULT '{}'
);

-- Newest first (keyset on id), per user, per event; and the retention sweep by time.
CREATE INDEX audit_events_user_idx ON audit_events (user_id, id DESC);
CREATE INDEX audit_events_event_idx ON audit_events (event, id DESC);
CREATE INDEX audit_events_time_idx ON audit_events (time);
