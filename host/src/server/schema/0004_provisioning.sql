-- Provisioning by claim (server/provisioning.rs). Times are milliseconds
-- since the epoch; JSON is TEXT.

-- The claims serve accepts: a batch certificate's common name, or the
-- broker user of a claim token. A revoked claim provisions nothing more.
CREATE TABLE provisioning_claims (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- The allow-list: which serial becomes which gateway, with which labels,
-- and which rollouts' versions it starts with (a JSON list of rollout ids).
CREATE TABLE provisioning_allow (
    serial     TEXT PRIMARY KEY,
    gateway    TEXT NOT NULL UNIQUE,
    labels     TEXT NOT NULL,
    deploy     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Every identity issued: the key it was issued for (sha256 of the public
-- key, hex) keeps a second gateway from taking an id that is taken.
CREATE TABLE provisioned (
    gateway    TEXT PRIMARY KEY,
    serial     TEXT NOT NULL,
    claim      TEXT NOT NULL,
    public_key TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    not_after  BIGINT NOT NULL
);

-- Every request id seen lately: a request seen before is a replay. Ids
-- older than twice a request's longest life are pruned (such a request is
-- refused as stale anyway).
CREATE TABLE provisioning_requests (
    request TEXT PRIMARY KEY,
    claim   TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX provisioning_requests_at ON provisioning_requests (at);

-- What was asked and answered, refusals too.
CREATE TABLE provisioning_log (
    id      TEXT PRIMARY KEY,
    at      BIGINT NOT NULL,
    claim   TEXT NOT NULL,
    serial  TEXT,
    request TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason  TEXT,
    gateway TEXT
);
CREATE INDEX provisioning_log_at ON provisioning_log (at);
