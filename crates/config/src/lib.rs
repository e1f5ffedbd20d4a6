#![cfg_attr(test, allow(clippy::unwrap_used))]
//! placeholder
mod analyze;
mod decode;
mod diag;
mod istio;
mod load;
mod mesh;
mod meta;
mod snapshot;
mod translate;
mod yaml;
pub use analyze::analyze;
pub use diag::{code, Diagnostic, Diagnostics, Severity};
pub use istio::*;
pub use load::*;
pub use mesh::*;
pub use meta::*;
pub use snapshot::*;
pub use translate::translate;
pub use yaml::FieldLines;
