-- The embedded store's schema: the same tables as PostgreSQL's, in SQLite's types. Ids are
-- 16-byte UUID blobs, times are microseconds since the Unix epoch (INTEGER), booleans 0/1.

CREATE TABLE users (
    id              BLOB PRIMARY KEY,
    email           TEXT NOT NULL CHECK (length(CAST(email AS BLOB)) <= 254),
    -- NFKC + lowercase form of email, computed by the application; the uniqueness key.
    email_canonical TEXT NOT NULL,
    role            TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    hashed_password TEXT,
    is_active       INTEGER NOT NULL DEFAULT 1,
    created_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    CONSTRAINT users_email_canonical_key UNIQUE (email_canonical)
);

CREATE INDEX users_created_at_id_idx ON users (created_at, id);
CREATE INDEX users_active_admins_idx ON users (id) WHERE role = 'admin' AND is_active;

CREATE TABLE sessions (
    id            BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret        BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    user_agent    TEXT,
    ip            TEXT
);

CREATE INDEX sessions_live_by_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    id            BLOB PRIMARY KEY,
    token_hash    BLOB NOT NULL CHECK (length(token_hash) = 32),
    token_family  BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id       BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    used_at       INTEGER,
    replaced_by   BLOB REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    created_at    INTEGER NOT NULL,
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (token_family);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

-- Failed logins per account per minute (window_start: the minute, in microseconds).
CREATE TABLE login_failures (
    email_canonical TEXT NOT NULL,
    window_start    INTEGER NOT NULL,
    failures        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (email_canonical, window_start)
);

-- What PostgreSQL's NOTIFY does between instances, for the processes sharing this file (the
-- gateway and CLI verbs): every revocation appends a row in its own transaction; the gateway
-- reads the rows after the last one it saw. Old rows are pruned; never copied by `db copy`.
CREATE TABLE revocation_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    at      INTEGER NOT NULL
);
