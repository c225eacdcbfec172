-- Synced tables (docs/synced-tables.md): the rows gateways' apps and the
-- server both edit, with their merge state, per gateway and device (the
-- device an app speaks for). Times are nanoseconds since the epoch; JSON is
-- TEXT.

-- Each table a changeset has come for: the rules it was merged by, as the
-- app's model declares them, and when it last changed. A write takes this
-- row first, so that two serve instances never merge into one table at once.
CREATE TABLE synced_tables (
    gateway    TEXT NOT NULL,
    device     TEXT NOT NULL,
    tbl        TEXT NOT NULL,
    rules      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, device, tbl)
);

-- The rows. `columns` is what readers see (the JSON object of the row's
-- columns, null for a deleted row); `state` is the merge's: every column's
-- version and the row's existence, kept after a delete as a tombstone.
CREATE TABLE synced_rows (
    gateway    TEXT NOT NULL,
    device     TEXT NOT NULL,
    tbl        TEXT NOT NULL,
    key        TEXT NOT NULL,
    columns    TEXT,
    state      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, device, tbl, key)
);

-- The changesets applied, by id: a repeat is skipped.
CREATE TABLE synced_applied (
    gateway    TEXT NOT NULL,
    device     TEXT NOT NULL,
    changeset  TEXT NOT NULL,
    changes    BIGINT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, device, changeset)
);

-- What the merge overwrote: one record per version that lost (a column's,
-- or with col = '' the row's existence), with the version kept, as the
-- gateways' store keeps them.
CREATE TABLE synced_overwritten (
    gateway     TEXT NOT NULL,
    device      TEXT NOT NULL,
    tbl         TEXT NOT NULL,
    key         TEXT NOT NULL,
    col         TEXT NOT NULL,
    kept        TEXT NOT NULL,
    lost        TEXT NOT NULL,
    lost_stamp  TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, device, tbl, key, col, lost_stamp)
);
