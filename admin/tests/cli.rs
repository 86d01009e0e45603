//! The built `leasehold-admin` binary against throwaway Redis, etcd and PostgreSQL servers:
//! `list`, `show`, `watch` and `release` (refused, then forced, with a runner holding the
//! lease and another waiting), and its errors for bad URLs and unreachable servers.
//!
//! Each backend case skips itself (with a notice) while that backend answers the
//! operator queries with `Unsupported`.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use leasehold::{Error, EventKind, FencingToken, LockBackend, LockKey, RunOptions, Runner};
use leasehold_conformance::servers::free_port;
use leasehold_conformance::{require_server, unique};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold-admin");

/// Settings the tool reads from the environment, removed so the test's own environment
/// cannot change what the binary connects to.
const ENV: &[&str] = &[
    "ROUTINE_BACKEND_URL",
    "REDIS_HOSTS",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "ROUTINE_POSTGRES_SCHEMA",
    "ROUTINE_POSTGRES_TABLE",
    "ROUTINE_POSTGRES_NAMESPACE",
    "ROUTINE_POSTGRES_REQUEST_TIMEOUT",
];

/// The binary with a clean environment.
fn admin() -> Command {
    let mut command = Command::new(BIN);
    for name in ENV {
        command.env_remove(name);
    }
    command.kill_on_drop(true);
    command
}

/// Runs the binary with `--url url` and `args`, within 30 s.
async fn run(url: &str, args: &[&str]) -> Output {
    let mut command = admin();
    command.arg("--url").arg(url).args(args);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("leasehold-admin {args:?} must finish within 30 s"))
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the exit code, showing both streams otherwise.
fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: exit code {code} expected\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    assert!(
        !stderr(output).contains("panicked"),
        "{what}: the tool must not panic: {}",
        stderr(output)
    );
}

/// `Some(value)`, or `None` with a skip notice when the backend does not support the
/// query yet.
fn supported<T>(backend: &str, result: leasehold::Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::Unsupported { operation, .. }) => {
            eprintln!("skipping: the {backend} backend does not support {operation} yet");
            None
        }
        Err(error) => panic!("{backend}: {}", error.chain()),
    }
}

async fn connect(url: &str) -> Arc<dyn LockBackend> {
    leasehold::connect(url)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {}", error.chain()))
}

/// Whether `backend` answers describe, list and force_release (skips the case if not).
async fn implements_operator_queries(backend: &dyn LockBackend) -> bool {
    let key = LockKey::new(unique("admin-probe")).unwrap();
    supported(backend.name(), backend.describe(&key).await).is_some()
        && supported(backend.name(), backend.list(key.as_str()).await).is_some()
        && supported(backend.name(), backend.force_release(&key).await).is_some()
}

/// `list`, `list --json`, `show` and `show --json` report a lease taken under a known
/// holder identity, and `show` of a free name says so with exit code 0.
async fn list_and_show_report_a_held_lease(url: &str) {
    let backend = connect(url).await;
    if !implements_operator_queries(&*backend).await {
        return;
    }
    let prefix = unique("admin-list");
    let name = format!("{prefix}-job");
    let key = LockKey::new(&name).unwrap();
    let mut lease = backend
        .try_acquire_as(&key, Duration::from_secs(30), "admin-test-holder")
        .await
        .expect("acquire")
        .expect("a fresh key is free");
    let token = lease.fencing_token();

    let output = run(url, &["list", &prefix]).await;
    assert_exit(&output, 0, "list");
    let table = stdout(&output);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    for column in ["NAME", "HOLDER", "TOKEN", "ACQUIRED", "EXPIRES IN"] {
        assert!(
            header.contains(column),
            "the header names {column}: {table}"
        );
    }
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with(&name)
            && row.contains("admin-test-holder")
            && row.contains(&token.to_string()),
        "the row shows name, holder and token {token}:\n{table}"
    );
    assert_eq!(lines.next(), None, "one lease under the prefix:\n{table}");

    let output = run(url, &["list", &prefix, "--json"]).await;
    assert_exit(&output, 0, "list --json");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON array");
    let leases = json.as_array().expect("an array");
    assert_eq!(leases.len(), 1, "{json}");
    assert_eq!(leases[0]["name"], name.as_str());
    assert_eq!(leases[0]["held"], true);
    assert_eq!(leases[0]["holder"], "admin-test-holder");
    assert_eq!(leases[0]["fencing_token"], u64::from(token));
    let left = leases[0]["expires_in_ms"].as_u64().expect("expires_in_ms");
    assert!(
        left > 0 && left <= 30_000,
        "expires in within the TTL: {json}"
    );

    let output = run(url, &["show", &name]).await;
    assert_exit(&output, 0, "show of a held lease");
    let detail = stdout(&output);
    assert!(
        detail.contains(&format!("name:          {name}"))
            && detail.contains("holder:        admin-test-holder")
            && detail.contains(&format!("fencing token: {token}"))
            && detail.contains("expires in:"),
        "show gives every field:\n{detail}"
    );

    let output = run(url, &["show", &name, "--json"]).await;
    assert_exit(&output, 0, "show --json");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON object");
    assert_eq!(json["holder"], "admin-test-holder", "{json}");

    let free = format!("{prefix}-free");
    let output = run(url, &["show", &free]).await;
    assert_exit(&output, 0, "show of a free name");
    assert_eq!(stdout(&output), format!("{free} is free\n"));
    let output = run(url, &["show", &free, "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON object");
    assert_eq!(json, serde_json::json!({ "name": free, "held": false }));

    lease.release().await.expect("release");
    let output = run(url, &["list", &prefix]).await;
    assert_exit(&output, 0, "list after release");
    assert!(
        stdout(&output).contains("no leases are held"),
        "{}",
        stdout(&output)
    );
}

/// `release` without `--force` exits 2, says who holds the lease and what forcing does
/// on this backend, and leaves the lease alone.
async fn release_without_force_refuses_and_explains(url: &str, explains: &str) {
    let backend = connect(url).await;
    if !implements_operator_queries(&*backend).await {
        return;
    }
    let name = unique("admin-refuse");
    let key = LockKey::new(&name).unwrap();
    let mut lease = backend
        .try_acquire_as(&key, Duration::from_secs(30), "admin-test-holder")
        .await
        .expect("acquire")
        .expect("a fresh key is free");
    let output = run(url, &["release", &name]).await;
    assert_exit(&output, 2, "release without --force");
    let text = stderr(&output);
    assert!(
        text.contains("without --force")
            && text.contains("admin-test-holder")
            && text.contains(explains)
            && text.contains(&format!("release --force {name}")),
        "the refusal names the holder, says {explains:?} and how to force:\n{text}"
    );
    let info = backend.describe(&key).await.expect("describe");
    assert_eq!(
        info.and_then(|info| info.fencing_token),
        Some(lease.fencing_token()),
        "a refused release leaves the lease with its holder"
    );
    lease.release().await.expect("release");
}

/// What the routines of the two runners report.
#[derive(Debug, PartialEq)]
enum Seen {
    Started(&'static str, Option<FencingToken>),
    Stopped(&'static str),
    /// The runner found the name held and waits.
    Contended(&'static str),
}

/// A runner on its own connection to `url` (so that PostgreSQL's session termination hits
/// only this one), running `name` as a keep-running routine that reports to `seen`.
async fn runner(
    url: &str,
    who: &'static str,
    retry: Duration,
    name: &str,
    seen: mpsc::UnboundedSender<Seen>,
) -> Runner {
    let runner = Runner::builder()
        .with_shared_backend(connect(url).await)
        .with_holder_identity(format!("admin-test-{who}"))
        .with_lease_ttl(Duration::from_secs(3))
        .with_retry_interval(retry)
        .with_signal_handling(false)
        .build()
        .expect("runner settings are valid");
    // Shown when a case fails: what each runner went through.
    let mut events = runner.subscribe();
    let contended = seen.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            eprintln!("runner {who}: {:?}", event.kind);
            if matches!(event.kind, EventKind::Contended { .. }) {
                let _ = contended.send(Seen::Contended(who));
            }
        }
    });
    runner.run_named(
        name,
        move |ctx| {
            let seen = seen.clone();
            async move {
                let _ = seen.send(Seen::Started(who, ctx.fencing_token()));
                // Reports the stop whether the routine returns or is dropped (a lost lease
                // may drop it before it sees the cancellation).
                let _stopped = OnDrop(Some(move || {
                    let _ = seen.send(Seen::Stopped(who));
                }));
                ctx.cancelled().await;
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    runner
}

/// Calls its function when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(Duration::from_secs(20), seen.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} within 20 s"))
        .expect("the runners are alive")
}

/// `release --force` frees a lease a runner holds: the holder's routine is cancelled and
/// a waiting runner takes over with a greater fencing token.
async fn forced_release_stops_the_holder_and_a_runner_takes_over(url: &str) {
    let probe = connect(url).await;
    if !implements_operator_queries(&*probe).await {
        return;
    }
    let name = unique("admin-force");
    let (tx, mut seen) = mpsc::unbounded_channel();
    // The holder retries slowly, the waiter quickly, so that once the lease is freed the
    // waiter is the one to take it.
    let holder = runner(url, "a", Duration::from_secs(3), &name, tx.clone()).await;
    let Seen::Started("a", Some(old)) = next(&mut seen, "the holder starts").await else {
        panic!("the first runner must start the routine under a lease");
    };
    let waiter = runner(url, "b", Duration::from_millis(100), &name, tx).await;
    let Seen::Contended("b") = next(&mut seen, "the waiter finds the name held").await else {
        panic!("the second runner must wait for the lease");
    };

    let output = run(url, &["show", &name]).await;
    assert!(
        stdout(&output).contains("holder:        admin-test-a"),
        "the holder is runner a:\n{}",
        stdout(&output)
    );

    let output = run(url, &["release", &name, "--force"]).await;
    assert_exit(&output, 0, "release --force");
    assert!(
        stdout(&output).starts_with(&format!("released {name} (it was held by admin-test-a")),
        "the release reports who held it:\n{}",
        stdout(&output)
    );

    // The holder stops, and a runner starts under a new lease: the waiter, or the old
    // holder's runner again once it has stopped. On PostgreSQL the holder's process
    // learns at once that its lock session was ended, and its runner tries again at
    // once, so it can take the name back before the waiter is woken.
    let mut stopped = false;
    let mut new = None;
    while !(stopped && new.is_some()) {
        match next(&mut seen, "the holder stops and a runner starts").await {
            Seen::Stopped("a") => stopped = true,
            Seen::Started("b", token) => new = token,
            Seen::Started("a", token) if stopped => new = token,
            // A runner that tries may find the name taken by the other.
            Seen::Contended(_) => {}
            other => panic!("a stops, then one runner starts after the forced release: {other:?}"),
        }
    }
    let new = new.expect("the new holder runs under a lease");
    assert!(
        new > old,
        "the new holder's fencing token {new} is greater than the old {old}"
    );

    let output = run(url, &["release", &unique("admin-free"), "--force"]).await;
    assert_exit(&output, 0, "release --force of a free name");
    assert!(
        stdout(&output).contains("was not held"),
        "{}",
        stdout(&output)
    );

    holder.shutdown().await;
    waiter.shutdown().await;
}

/// `watch` prints the state, then each change of holder, and ends with exit code 0 on
/// SIGINT.
async fn watch_prints_each_change_of_holder(url: &str) {
    let backend = connect(url).await;
    if !implements_operator_queries(&*backend).await {
        return;
    }
    let name = unique("admin-watch");
    let key = LockKey::new(&name).unwrap();
    let mut child = admin()
        .args(["--url", url, "watch", &name, "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20 s")
            .expect("read")
            .expect("watch keeps running")
    };
    let first = line().await;
    assert!(first.ends_with(&format!("{name} is free")), "{first}");

    let mut lease = backend
        .try_acquire_as(&key, Duration::from_secs(30), "admin-test-holder")
        .await
        .expect("acquire")
        .expect("free");
    let held = line().await;
    assert!(
        held.contains(&format!(
            "{name} held by admin-test-holder, fencing token {}",
            lease.fencing_token()
        )),
        "{held}"
    );
    lease.release().await.expect("release");
    let free = line().await;
    assert!(free.ends_with(&format!("{name} is free")), "{free}");

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("watch ends on SIGINT")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends watch normally");
}

/// A server that is not there is an error naming where the tool tried to connect,
/// without the password, and exit code 1.
async fn unreachable_server_is_a_clear_error(scheme: &str, path: &str, backend: &str) {
    let url = format!("{scheme}://admin:hunter2@127.0.0.1:{}{path}", free_port());
    let output = run(&url, &["list"]).await;
    assert_exit(&output, 1, "an unreachable server");
    let text = stderr(&output);
    assert!(
        text.starts_with("leasehold-admin: cannot connect to ")
            && text.contains("127.0.0.1")
            && text.contains("(from --url)")
            && text.contains(&format!("{backend} backend unavailable during")),
        "the error says where and what failed:\n{text}"
    );
    assert!(!text.contains("hunter2"), "no password in errors: {text}");
}

macro_rules! backend_tests {
    (
        $module:ident,
        $server:ident,
        $scheme:literal,
        $path:literal,
        $backend:literal,
        $explains:literal
    ) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn list_and_show_report_a_held_lease() {
                let server = require_server!($server);
                super::list_and_show_report_a_held_lease(&server.url()).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn release_without_force_refuses_and_explains() {
                let server = require_server!($server);
                super::release_without_force_refuses_and_explains(&server.url(), $explains).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn forced_release_stops_the_holder_and_a_runner_takes_over() {
                let server = require_server!($server);
                super::forced_release_stops_the_holder_and_a_runner_takes_over(&server.url()).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn watch_prints_each_change_of_holder() {
                let server = require_server!($server);
                super::watch_prints_each_change_of_holder(&server.url()).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn unreachable_server_is_a_clear_error() {
                super::unreachable_server_is_a_clear_error($scheme, $path, $backend).await;
            }
        }
    };
}

backend_tests!(
    redis,
    RedisServer,
    "redis",
    "/0",
    "redis",
    "forcing deletes the lease's key (only this one)"
);
backend_tests!(
    etcd,
    EtcdServer,
    "etcd",
    "",
    "etcd",
    "forcing deletes the lease's key (only this one)"
);
backend_tests!(
    postgres,
    PostgresServer,
    "postgres",
    "/db",
    "postgres",
    "terminates the holder's lock session"
);

#[tokio::test]
async fn a_bad_url_names_the_setting_it_came_from() {
    let output = run("ftp://example", &["list"]).await;
    assert_exit(&output, 1, "an unknown scheme");
    assert!(
        stderr(&output).contains("invalid configuration --url: unknown scheme `ftp://`"),
        "{}",
        stderr(&output)
    );

    let output = admin()
        .env("ROUTINE_BACKEND_URL", "nonsense")
        .args(["show", "job"])
        .output()
        .await
        .expect("runs");
    assert_exit(&output, 1, "a malformed ROUTINE_BACKEND_URL");
    assert!(
        stderr(&output).contains("invalid configuration ROUTINE_BACKEND_URL: not a URL"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn the_url_option_wins_over_the_environment() {
    let output = admin()
        .env("ROUTINE_BACKEND_URL", "nonsense")
        .args(["--url", "memory://", "show", "job"])
        .output()
        .await
        .expect("runs");
    assert_exit(&output, 0, "--url over ROUTINE_BACKEND_URL");
    assert_eq!(stdout(&output), "job is free\n");
}

#[tokio::test]
async fn usage_errors_exit_with_2() {
    let output = run("memory://", &["show"]).await;
    assert_exit(&output, 2, "a missing name");
    let output = run("memory://", &["watch", "job", "--interval", "0s"]).await;
    assert_exit(&output, 2, "a zero interval");
    let output = run("memory://", &["release", "job"]).await;
    assert_exit(&output, 2, "release without --force");
    assert!(
        stderr(&output).contains("memory backend"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn an_invalid_name_is_an_error_not_a_panic() {
    let output = run("memory://", &["show", "bad\nname"]).await;
    assert_exit(&output, 1, "a name with a newline");
    assert!(
        stderr(&output).contains("invalid lock name"),
        "{}",
        stderr(&output)
    );
}
