//! The behaviour suite every `routine` lease backend must pass (work in progress).
#[cfg(feature = "servers")]
pub mod servers;
