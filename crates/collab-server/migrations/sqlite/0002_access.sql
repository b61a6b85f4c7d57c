-- Access control: who made each op, and revoked tokens.

-- The `sub` of the token an op was sent with; NULL for ops made while the
-- server was open (and for every op stored before this migration).
ALTER TABLE operations ADD COLUMN author TEXT;

-- A revocation names one token (`jti`) or one user (`sub`: every token of
-- theirs issued at or before `revoked_at`, unix seconds). Rows are never
-- deleted; `id` orders them, so instances read only what is new.
CREATE TABLE revocations (
    id         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    jti        TEXT,
    sub        TEXT,
    revoked_at INTEGER NOT NULL,
    CHECK ((jti IS NULL) <> (sub IS NULL))
);
