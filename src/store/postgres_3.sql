-- A counter bumped by every revoke and sign-out, so that each node notices with one small read
-- that the credentials behind its open streams must be checked again.
CREATE TABLE credential_changes (n BIGINT NOT NULL);
INSERT INTO credential_changes VALUES (0);
