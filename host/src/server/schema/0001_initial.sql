-- wasmgate cloud serve: the tables (docs/server.md describes them). Written
-- in SQL that SQLite and PostgreSQL both take: times are BIGINT nanoseconds
-- since the epoch (UTC), JSON is TEXT.

-- Each gateway as its latest status message describes it.
CREATE TABLE gateways (
    gateway     TEXT PRIMARY KEY,
    online      BOOLEAN NOT NULL,
    reason      TEXT,
    status_time BIGINT,
    stored_at   BIGINT NOT NULL,
    status      TEXT NOT NULL
);

-- When each gateway came online or went offline.
CREATE TABLE gateway_events (
    gateway TEXT NOT NULL,
    time    BIGINT NOT NULL,
    online  BOOLEAN NOT NULL,
    reason  TEXT
);
CREATE INDEX gateway_events_by_gateway ON gateway_events (gateway, time);

-- The apps of each gateway, from its latest status with apps in it.
CREATE TABLE apps (
    gateway   TEXT NOT NULL,
    name      TEXT NOT NULL,
    device    TEXT NOT NULL,
    state     TEXT NOT NULL,
    version   BIGINT NOT NULL,
    component TEXT NOT NULL,
    restarts  BIGINT NOT NULL,
    error     TEXT,
    PRIMARY KEY (gateway, name)
);

-- Devices: an app's own device, or one an app registered.
CREATE TABLE devices (
    gateway      TEXT NOT NULL,
    device       TEXT NOT NULL,
    app          TEXT,
    model        TEXT,
    registration TEXT,
    PRIMARY KEY (gateway, device)
);

-- Each device's twin: the latest reported state, desired state and ack.
CREATE TABLE twins (
    gateway          TEXT NOT NULL,
    device           TEXT NOT NULL,
    reported         TEXT,
    reported_version BIGINT,
    reported_time    BIGINT,
    desired          TEXT,
    desired_version  BIGINT,
    ack              TEXT,
    ack_version      BIGINT,
    PRIMARY KEY (gateway, device)
);

-- Telemetry batches stored, by their id: a batch sent again is not stored
-- twice.
CREATE TABLE batches (
    gateway   TEXT NOT NULL,
    batch     TEXT NOT NULL,
    device    TEXT NOT NULL,
    series    TEXT NOT NULL,
    points    BIGINT NOT NULL,
    stored_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, batch)
);

-- One row per field of each point.
CREATE TABLE points (
    gateway    TEXT NOT NULL,
    device     TEXT NOT NULL,
    series     TEXT NOT NULL,
    field      TEXT NOT NULL,
    time       BIGINT NOT NULL,
    value      DOUBLE PRECISION,
    value_json TEXT NOT NULL,
    batch      TEXT NOT NULL,
    point      BIGINT NOT NULL
);
CREATE INDEX points_by_series ON points (gateway, device, series, field, time);

CREATE TABLE alerts (
    id          TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    device      TEXT NOT NULL,
    name        TEXT NOT NULL,
    time        BIGINT NOT NULL,
    severity    TEXT NOT NULL,
    values_json TEXT NOT NULL,
    PRIMARY KEY (gateway, id)
);
CREATE INDEX alerts_by_device ON alerts (gateway, device, time);

-- Deployments as the gateways reported them (the latest stage of each).
CREATE TABLE deployments (
    gateway    TEXT NOT NULL,
    id         TEXT NOT NULL,
    stage      TEXT NOT NULL,
    received   BIGINT NOT NULL,
    chunks     BIGINT NOT NULL,
    message    TEXT,
    error      TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, id)
);
