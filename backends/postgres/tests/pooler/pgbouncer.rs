//! A throwaway PgBouncer in front of a `PostgresServer`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use leasehold_conformance::servers::{
    PostgresServer, ServerProcess, TempDir, find_binary, free_port, require_services, wait_for_port,
};

/// PgBouncer on a random loopback port, trusting user `postgres`, in one pool mode.
#[derive(Debug)]
pub(crate) struct PgBouncer {
    port: u16,
    _process: ServerProcess,
    _dir: TempDir,
}

impl PgBouncer {
    /// Starts PgBouncer with `pool_mode` in front of `server`, or returns `None` (with a
    /// notice) when `pgbouncer` is not installed outside CI; under CI (where
    /// `scripts/test` installs it) a missing binary fails the test.
    pub(crate) fn start(server: &PostgresServer, pool_mode: &str) -> Option<Self> {
        let Some(binary) = find_binary("pgbouncer", &["/usr/sbin"]) else {
            assert!(
                !require_services(),
                "`pgbouncer` not found but services are required (CI): apt-get install pgbouncer"
            );
            eprintln!("skipping: `pgbouncer` not found (apt-get install pgbouncer)");
            return None;
        };
        let dir = TempDir::new("pgbouncer").expect("temp dir");
        let port = free_port();
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n").expect("userlist");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 postgres = host=127.0.0.1 port={pg} dbname=postgres user=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {dir}/userlist.txt\n\
                 pool_mode = {pool_mode}\n\
                 default_pool_size = 4\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                pg = server.port(),
                dir = dir.path().display(),
            ),
        )
        .expect("config");
        // PgBouncer refuses to run as root.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        let (program, mut args) = if root {
            Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            let setpriv = vec![
                "--reuid=postgres".to_owned(),
                "--regid=postgres".to_owned(),
                "--init-groups".to_owned(),
                "--".to_owned(),
                binary.display().to_string(),
            ];
            (PathBuf::from("setpriv"), setpriv)
        } else {
            (binary, Vec::new())
        };
        args.push(config.display().to_string());
        let log = dir.path().join("pgbouncer.log");
        let process = ServerProcess::spawn("pgbouncer", &program, &args, &log).expect("spawn");
        wait_for_port(port, Duration::from_secs(10)).unwrap_or_else(|err| {
            panic!(
                "pgbouncer did not start: {err}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Some(Self {
            port,
            _process: process,
            _dir: dir,
        })
    }

    /// A URL for user `postgres` through the pooler.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}
