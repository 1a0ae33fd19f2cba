-- How the user of a session authenticated: the access tokens' `auth_time` and `amr` (and the
-- `acr` derived from it), kept by refresh. Sessions from before: signed in at creation, by
-- password.
ALTER TABLE sessions ADD COLUMN auth_time timestamptz;
UPDATE sessions SET auth_time = created_at;
ALTER TABLE sessions ALTER COLUMN auth_time SET NOT NULL;
ALTER TABLE sessions ALTER COLUMN auth_time SET DEFAULT now();
-- RFC 8176 method values, space-separated.
ALTER TABLE sessions ADD COLUMN amr text NOT NULL DEFAULT 'pwd';
