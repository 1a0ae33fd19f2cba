-- Users, sessions (token families) and refresh tokens. Refresh tokens are stored only as
-- SHA-256 hashes; a session row is what gets revoked, so "is session S revoked?" is one
-- primary-key lookup.

CREATE TYPE user_role AS ENUM ('user', 'admin');

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    email           text NOT NULL CHECK (octet_length(email) <= 254),
    -- NFKC + lowercase form of email, computed by the application; the uniqueness key.
    email_canonical text NOT NULL,
    role            user_role NOT NULL DEFAULT 'user',
    hashed_password text,
    is_active       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_canonical_key UNIQUE (email_canonical)
);

-- Keyset pagination of the admin user list.
CREATE INDEX users_created_at_id_idx ON users (created_at, id);
-- The last-admin guard counts active admins.
CREATE INDEX users_active_admins_idx ON users (id) WHERE role = 'admin' AND is_active;

-- One row per login: the token family. Revoking the session revokes every refresh and access
-- token issued in it.
CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Server-side HMAC key: a successor refresh token is HMAC(secret, parent token), so
    -- concurrent refreshes of one token all get the same successor.
    secret        bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    -- Absolute end of the session (refresh_ttl_secs from login; rotation does not extend it).
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    user_agent    text,
    ip            inet
);

CREATE INDEX sessions_live_by_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    id            uuid PRIMARY KEY,
    token_hash    bytea NOT NULL CHECK (octet_length(token_hash) = 32),
    token_family  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    -- Set when the token is rotated; a second use after the grace window is theft.
    used_at       timestamptz,
    replaced_by   uuid REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (token_family);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

-- Failed logins per account per minute, shared by every gateway instance.
CREATE TABLE login_failures (
    email_canonical text NOT NULL,
    window_start    timestamptz NOT NULL,
    failures        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (email_canonical, window_start)
);
