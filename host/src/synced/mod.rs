//! Synced tables: rows that a gateway's app and the server both edit, kept
//! in step both ways (issue 17). So far the pure core both ends share: the
//! hybrid logical clock that orders changes ([`clock`]) and the per-column
//! merge that makes two replicas converge whatever the order and duplication
//! of the changes they apply ([`merge`]). Storage, transport and the guest
//! interface build on these; see docs/synced-tables.md.

pub mod clock;
pub mod merge;
