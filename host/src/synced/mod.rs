//! Synced tables: rows that a gateway's app and the server both edit, kept
//! in step both ways (issue 17). So far the parts both ends share: the
//! hybrid logical clock that orders changes ([`clock`]), the per-column
//! merge that makes two replicas converge whatever the order and duplication
//! of the changes they apply ([`merge`]), and the rows with their versions in
//! SQLite ([`store`]). The guest interface, the transport and the server
//! build on these; see docs/synced-tables.md.

pub mod clock;
pub mod merge;
pub mod store;
