//! The conformance cases: one documented `pub async fn` per behaviour.
//!
//! Each takes a [`Harness`](crate::Harness) and panics with a message saying what must
//! hold when the backend misbehaves. [`conformance_tests!`](crate::conformance_tests)
//! turns each into a named `#[test]`; a backend author may also call them directly.

mod lease;
mod notify;
mod operator;
mod record;
mod runner;
mod schedule;

pub use lease::*;
pub use notify::*;
pub use operator::*;
pub use record::*;
pub use runner::*;
pub use schedule::*;
