-- Login through external OpenID Connect providers. States and login codes live in the
-- database (hashed) so the browser may come back through any gateway instance.

-- Pending authorization requests: single use, valid 10 minutes.
CREATE TABLE oidc_states (
    state_hash    bytea PRIMARY KEY,
    provider      text NOT NULL,
    nonce         text NOT NULL,
    pkce_verifier text NOT NULL,
    redirect_to   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oidc_states_created_at_idx ON oidc_states (created_at);

-- Which provider subject is which account.
CREATE TABLE oidc_identities (
    provider   text NOT NULL,
    subject    text NOT NULL,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);
CREATE INDEX oidc_identities_user_idx ON oidc_identities (user_id);

-- One-time codes handed to the browser after a provider login: single use, valid 60 s.
CREATE TABLE oidc_login_codes (
    code_hash  bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
