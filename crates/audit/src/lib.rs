//! Ward's audit trail: one record per authorization decision, in a stream separate from the
//! access log, that anyone can check for completeness and integrity (docs/audit.md).
//!
//! - [`record`]: the format. JSON lines; each record carries its sequence number and the
//!   SHA-256 of the line before it, so editing, deleting, inserting or reordering a record
//!   breaks the chain at that point.
//! - [`signer`]: checkpoints, records signed with a key whose certificate chains to the mesh
//!   CA, seal everything before them. They are written into the trail and, as the same bytes,
//!   into a separate seal file, so cutting the trail short is caught too.
//! - [`writer`]: appends, checkpoints at intervals and at rotation, rotates by size and age;
//!   the chain continues across files.
//! - [`verify`]: pure. Files (and the seal file) in, a report out: complete and unaltered, or
//!   the first bad record and what is wrong with it.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod record;
pub mod signer;
pub mod verify;
pub mod writer;

pub use record::{Record, GENESIS};
pub use signer::{CheckpointSigner, KeySigner};
pub use verify::{verify, Problem, Report, TrailFile};
pub use writer::{AuditError, Rotation, Writer};
