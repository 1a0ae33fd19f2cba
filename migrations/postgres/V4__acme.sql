-- ACME (RFC 8555) state shared by every instance: the account, pending HTTP-01 challenges
-- (any instance may be asked for one), the issued certificate, and an ordering lease so only
-- one instance talks to the CA at a time.

CREATE TABLE acme_accounts (
    directory_url text PRIMARY KEY,
    credentials   jsonb NOT NULL,          -- instant-acme's account credentials (key included)
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE acme_challenges (
    token             text PRIMARY KEY,
    key_authorization text NOT NULL,
    expires_at        timestamptz NOT NULL
);

CREATE TABLE acme_certificates (
    domains    text PRIMARY KEY,           -- sorted, lower-case, comma-separated
    cert_pem   text NOT NULL,              -- leaf first, then the chain
    key_pem    text NOT NULL,
    not_after  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE acme_leases (
    domains      text PRIMARY KEY,
    locked_until timestamptz NOT NULL
);
