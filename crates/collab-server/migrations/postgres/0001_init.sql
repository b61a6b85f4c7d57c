-- Documents, their operation log (the source of truth) and content snapshots.
-- Times are integer unix milliseconds (UTC), identical in the SQLite schema.

CREATE TABLE documents (
    id         TEXT   NOT NULL PRIMARY KEY,
    title      TEXT   NOT NULL,
    rev        BIGINT NOT NULL DEFAULT 0 CHECK (rev >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Listing is "newest updated_at first".
CREATE INDEX documents_updated_at ON documents (updated_at DESC, id);

CREATE TABLE operations (
    document_id TEXT   NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    rev         BIGINT NOT NULL CHECK (rev > 0),
    op          TEXT   NOT NULL,
    client_id   TEXT,
    seq         BIGINT CHECK (seq > 0),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (document_id, rev),
    -- Exactly-once: a (client_id, seq) is committed at most once per document.
    -- Rows with NULL client_id/seq (REST edits) never collide.
    UNIQUE (document_id, client_id, seq)
);

CREATE TABLE snapshots (
    document_id TEXT   NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    rev         BIGINT NOT NULL CHECK (rev >= 0),
    content     TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (document_id, rev)
);
