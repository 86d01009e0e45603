//! After the runner has shut down, SIGTERM has its default effect again: the process ends.
//! The process that is signalled is a child: this test binary run again with one test.
#![cfg(all(unix, feature = "signals"))]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leasehold::{MemoryBackend, Runner};

/// Set in the child's environment.
const CHILD: &str = "ROUTINE_SIGNALS_TEST_CHILD";

/// SIGTERM's number on every Unix.
const SIGTERM: i32 = 15;

/// The child: shuts a signal-handling runner down, says so, and waits to be signalled.
/// Run only by the test below.
#[tokio::test]
#[ignore = "the child process of sigterm_after_the_runner_has_shut_down_ends_the_process"]
async fn child_shuts_down_then_waits_for_a_signal() {
    assert!(std::env::var_os(CHILD).is_some(), "run only as the child");
    let runner = Runner::builder()
        .with_backend(MemoryBackend::new())
        .with_signal_handling(true)
        .build()
        .unwrap();
    runner.run(|ctx| async move { ctx.cancelled().await });
    runner.shutdown().await;
    println!("shut down");
    tokio::time::sleep(Duration::from_secs(60)).await;
    println!("still alive");
}

#[test]
fn sigterm_after_the_runner_has_shut_down_ends_the_process() {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_shuts_down_then_waits_for_a_signal",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines
            .next()
            .expect("the child must say it shut down")
            .expect("readable");
        if line.contains("shut down") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGTERM after shutdown must end the process, it was swallowed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.signal(),
        Some(SIGTERM),
        "the process must end by SIGTERM's default action, got {status:?}"
    );
}
