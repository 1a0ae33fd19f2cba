-- A provider login started from the sign-in page ends in the browser session cookies (and a
-- 303 to `redirect_to`, the page's `rd`) instead of a one-time login code.
ALTER TABLE oidc_states ADD COLUMN for_browser boolean NOT NULL DEFAULT false;
