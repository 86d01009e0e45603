//! Latency benchmark (work in progress).
fn main() {}
