-- ACME (RFC 8555) state (see the PostgreSQL migration of the same name). `credentials` and
-- `key_pem` hold values sealed under the data key ring.

CREATE TABLE acme_accounts (
    directory_url TEXT PRIMARY KEY,
    credentials   TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE acme_challenges (
    token             TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    expires_at        INTEGER NOT NULL
);

CREATE TABLE acme_certificates (
    domains    TEXT PRIMARY KEY,
    cert_pem   TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    not_after  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE acme_leases (
    domains      TEXT PRIMARY KEY,
    locked_until INTEGER NOT NULL
);
