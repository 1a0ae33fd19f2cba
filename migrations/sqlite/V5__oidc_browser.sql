-- A provider login started from the sign-in page ends in the browser session cookies.
ALTER TABLE oidc_states ADD COLUMN for_browser INTEGER NOT NULL DEFAULT 0;
