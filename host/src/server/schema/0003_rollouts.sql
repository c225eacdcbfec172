-- Rollouts: a signed version sent to a fleet in waves (server/rollout.rs
-- decides, server/rollouts.rs drives). Times are milliseconds since the
-- epoch here; JSON is TEXT.
CREATE TABLE rollouts (
    id         TEXT PRIMARY KEY,
    app        TEXT NOT NULL,
    -- The component's sha256, hex: what the gateways' statuses must show.
    sha256     TEXT NOT NULL,
    -- {"selector": "..."} or {"gateways": [...]}
    target     TEXT NOT NULL,
    -- Waves, abort share, rate, offline rule (rollout::Policy).
    policy     TEXT NOT NULL,
    -- The signed manifests and rollback orders, by gateway ("*" for all).
    manifests  TEXT NOT NULL,
    rollbacks  TEXT NOT NULL,
    -- The component, base64.
    component  TEXT NOT NULL,
    state      TEXT NOT NULL,
    wave       BIGINT NOT NULL,
    reason     TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Each target gateway of a rollout and how far it is (rollout::Target).
CREATE TABLE rollout_gateways (
    rollout          TEXT NOT NULL,
    gateway          TEXT NOT NULL,
    position         BIGINT NOT NULL,
    state            TEXT NOT NULL,
    wave             BIGINT,
    wave_at          BIGINT,
    sent_at          BIGINT,
    first_offered_at BIGINT,
    chunks_sent      BIGINT NOT NULL DEFAULT 0,
    deployed_at      BIGINT,
    restarts         BIGINT,
    detail           TEXT,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (rollout, gateway)
);
