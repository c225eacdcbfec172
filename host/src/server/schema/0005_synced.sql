-- Synced tables (docs/synced-tables.md): the rows gateways' apps and the
-- server both edit, with their merge state, per gateway and device (the
-- device an app speaks for). Times are nanoseconds since the epoch; JSON is
-- TEXT.

-- Each table a changeset has come for or the API has edited: the rules it
-- was merged by, as the app's model declares them, and when it last
-- changed; the server's clock for the table (its last stamp: wall
-- milliseconds and counter; the server's node is 0), and the number of its
-- last changeset sent down. A write takes this row first, so that two serve
-- instances never merge into one table at once.
CREATE TABLE synced_tables (
    gateway       TEXT NOT NULL,
    device        TEXT NOT NULL,
    tbl           TEXT NOT NULL,
    rules         TEXT NOT NULL,
    updated_at    BIGINT NOT NULL,
    clock_wall    BIGINT NOT NULL DEFAULT 0,
    clock_counter BIGINT NOT NULL DEFAULT 0,
    down_seq      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, device, tbl)
);

-- The server's own changes, as the changesets sent down, numbered per table
-- (`seq`, from 1): a gateway's pull asks for those after the last it has.
CREATE TABLE synced_down (
    gateway    TEXT NOT NULL,
    device     TEXT NOT NULL,
    tbl        TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    changeset  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (gateway, device, tbl, seq)
);

-- The rows. `columns` is what readers see (the JSON object of the row's
-- columns, null for a deleted row); `state` is the merge's: every column's
-- version and the row's existence, kept after a delete as a tombstone.
-- Plain SQL edits a row by writing `columns` and setting `edited` to 1;
-- serve makes that the server's edit and sets it back to 0, with
-- `edit_error` saying why if it could not (docs/synced-tables.md).
CREATE TABLE synced_rows (
    gateway    TEXT NOT NULL,
    device     TEXT NOT NULL,
    tbl        TEXT NOT NULL,
    key        TEXT NOT NULL,
    columns    TEXT,
    state      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    edited     INTEGER NOT NULL DEFAULT 0,
    edit_error TEXT,
    PRIMARY KEY (gateway, device, tbl, key)
);
CREATE INDEX synced_rows_edited ON synced_rows (gateway, device, tbl) WHERE edited = 1;

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
