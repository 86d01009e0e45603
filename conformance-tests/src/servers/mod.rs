//! Throwaway database servers for backend tests (feature `servers`).
//!
//! Each server runs as a child process on a random free loopback port with its data in a
//! temporary directory, so a test can kill it, pause it with `SIGSTOP` and restart it
//! without touching anything else on the machine. Servers die with the test process:
//! they are started under a small shell supervisor that kills them when the test
//! process's pipe to it closes, even if the test process is killed.
//!
//! A missing server binary skips the test (the starter returns `None`) unless services
//! are required: under CI (`CI=true`) or with `ROUTINE_TEST_REQUIRE_SERVICES=1`, where
//! it is a failure. [`require_server!`](crate::require_server) opens a test with that
//! rule, and each server's `shared()` gives the one server a test binary's harmless
//! tests share.

mod etcd;
mod etcd_cluster;
mod held_proxy;
mod postgres;
mod postgres_pair;
mod process;
mod redis;
mod redis_cluster;
mod redis_sentinel;
mod resp;
mod shared;
mod tls;

pub use etcd::EtcdServer;
pub use etcd_cluster::*;
pub use postgres::PostgresServer;
pub use postgres_pair::*;
pub use process::{
    ServerProcess, TempDir, find_binary, free_port, require_services, wait_for_port,
};
pub use redis::RedisServer;
pub use redis_cluster::*;
pub use redis_sentinel::*;
pub use tls::*;
