//! The subcommands: `list`, `show`, `watch` and `release`, each on a connected backend.

use std::io::Write;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use leasehold::{LockBackend, LockKey};
use leasehold_core::LeaseInfo;

use crate::error::AdminError;
use crate::render::{self, LeaseJson};

/// `list`: every held lease whose name starts with `prefix`, as a table or JSON.
pub(crate) async fn list(
    backend: &dyn LockBackend,
    prefix: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let leases = backend.list(prefix).await?;
    if json {
        let rows: Vec<LeaseJson<'_>> = leases.iter().map(LeaseJson::held).collect();
        serde_json::to_writer_pretty(&mut *out, &rows).map_err(AdminError::Json)?;
        writeln!(out)?;
    } else if leases.is_empty() && prefix.is_empty() {
        writeln!(out, "no leases are held")?;
    } else if leases.is_empty() {
        writeln!(out, "no leases are held under {prefix:?}")?;
    } else {
        render::table(out, &leases, SystemTime::now())?;
    }
    Ok(())
}

/// `show`: one lease in detail, or that the name is free.
pub(crate) async fn show(
    backend: &dyn LockBackend,
    name: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let key = LockKey::new(name)?;
    let info = backend.describe(&key).await?;
    match (&info, json) {
        (Some(info), true) => {
            serde_json::to_writer_pretty(&mut *out, &LeaseJson::held(info))
                .map_err(AdminError::Json)?;
            writeln!(out)?;
        }
        (None, true) => {
            serde_json::to_writer_pretty(&mut *out, &LeaseJson::free(key.as_str()))
                .map_err(AdminError::Json)?;
            writeln!(out)?;
        }
        (Some(info), false) => render::detail(out, info, SystemTime::now())?,
        (None, false) => writeln!(out, "{key} is free")?,
    }
    Ok(())
}

/// Who holds a lease, as far as `watch` tells changes apart: a new acquisition has a new
/// fencing token, so holder and token together name one holding (`None`: free).
type Holding = Option<(Option<String>, Option<u64>)>;

fn holding(info: &Option<LeaseInfo>) -> Holding {
    info.as_ref()
        .map(|info| (info.holder.clone(), info.fencing_token.map(u64::from)))
}

/// The least time between two reads, so that a backend whose release notification wakes
/// spuriously cannot make `watch` spin.
const MIN_READ_GAP: Duration = Duration::from_millis(50);

/// `watch`: prints the lease's state, then a line each time its holder changes, until
/// Ctrl-C (or SIGTERM).
///
/// It reads with `describe` at every `interval` and at once when the backend pushes a
/// release (`released`). The release future is polled once before each read, so that a
/// release that happens between the read and the wait still wakes it (the contract of
/// `released`). Transient errors (the server restarting) are printed and the watch goes
/// on; any other error ends it.
pub(crate) async fn watch(
    backend: Arc<dyn LockBackend>,
    name: &str,
    interval: Duration,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let key = LockKey::new(name)?;
    let mut stop = pin!(stop_signal());
    let mut last: Option<Holding> = None;
    let mut notifications = true;
    let mut failing = false;
    loop {
        let listen = notifications;
        let (backend, key) = (&backend, &key);
        let mut released = pin!(async move {
            if listen {
                backend.released(key).await
            } else {
                futures::future::pending().await
            }
        });
        // Register interest before reading, so that a release between the read and the
        // wait still wakes the wait.
        let early = futures::poll!(released.as_mut());
        match backend.describe(key).await {
            Ok(info) => {
                failing = false;
                let now = holding(&info);
                if last.as_ref() != Some(&now) {
                    let stamp = render::rfc3339(SystemTime::now());
                    match &info {
                        Some(info) => writeln!(out, "{stamp}  {key} {}", render::summary(info))?,
                        None => writeln!(out, "{stamp}  {key} is free")?,
                    }
                    out.flush()?;
                    last = Some(now);
                }
            }
            Err(error) if error.is_transient() => {
                if !failing {
                    eprintln!(
                        "leasehold-admin: {} (retrying every {})",
                        error.chain(),
                        render::human(interval)
                    );
                    failing = true;
                }
            }
            Err(error) => return Err(error.into()),
        }
        let woken = async {
            match early {
                Poll::Ready(result) => result,
                Poll::Pending => released.await,
            }
        };
        let wait = async {
            tokio::select! {
                result = woken => {
                    if let Err(error) = result {
                        eprintln!(
                            "leasehold-admin: release notifications failed, polling every {} \
                             instead: {}",
                            render::human(interval),
                            error.chain()
                        );
                        notifications = false;
                    }
                    tokio::time::sleep(MIN_READ_GAP).await;
                }
                () = tokio::time::sleep(interval) => {}
            }
        };
        tokio::select! {
            () = wait => {}
            () = &mut stop => return Ok(()),
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c().map(|_| ());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    () = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => interrupt.await,
        }
    }
    #[cfg(not(unix))]
    interrupt.await;
}

/// What a forced release does on `backend` (by its [`LockBackend::name`]).
pub(crate) fn forcing_explained(backend: &str) -> String {
    match backend {
        "redis" | "etcd" => format!(
            "On {}, forcing deletes the lease's key (only this one) and wakes the \
             waiters, so a waiting instance may start at once. The holder is not told: it \
             learns at its next refresh that it lost the lease, and its routine is cancelled \
             and then dropped. So two instances can overlap for up to a \
             refresh interval (TTL / 5 by default). Fencing tokens still order their writes: \
             the new holder's token is greater.",
            if backend == "redis" { "Redis" } else { "etcd" }
        ),
        "postgres" => "On PostgreSQL, forcing terminates the holder's lock session \
             (pg_terminate_backend), which frees EVERY lease held by that process, not only \
             this one: their routines are all cancelled and then dropped. This key's claim is \
             cleared and its waiters woken at once; the holder's other keys stay guarded by \
             its session heartbeat until their routines stop, so they do not overlap. The \
             holder learns at once (the ended session is announced by NOTIFY) or at its next \
             refresh; until its routine stops it can overlap with the next holder of this \
             key. Fencing tokens still order their writes. Ending another role's session \
             needs pg_signal_backend or membership in that role."
            .to_owned(),
        "memory" => "On the memory backend, forcing frees the key in this process only; \
             no other process shares it."
            .to_owned(),
        other => format!(
            "On {other}, forcing frees the key whoever holds it. The holder keeps running \
             until it next refreshes and learns of the loss, while a waiter may start at \
             once, so two instances can overlap for up to a refresh interval. Fencing \
             tokens still order their writes."
        ),
    }
}

/// `release`: without `force`, says who holds the lease and what forcing would do, and
/// refuses; with it, frees the lease and says whether it was held.
pub(crate) async fn release(
    backend: &dyn LockBackend,
    name: &str,
    force: bool,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let key = LockKey::new(name)?;
    // Who holds it, for the message: best effort, since a backend may answer
    // force_release but not describe.
    let before = backend.describe(&key).await;
    if !force {
        let state = match &before {
            Ok(Some(info)) => format!("{key} is {}.", render::summary(info)),
            Ok(None) => format!("{key} is free now; there is nothing to release."),
            Err(error) => format!("(cannot tell who holds {key}: {})", error.chain()),
        };
        return Err(AdminError::Refused(format!(
            "refusing to release {key} without --force.\n{state}\n{}\n\
             Stopping or restarting the holder releases its lease cleanly; to force it \
             anyway, run: leasehold-admin release --force {key}",
            forcing_explained(backend.name())
        )));
    }
    let was_held = backend.force_release(&key).await?;
    match (was_held, before) {
        (true, Ok(Some(info))) => {
            writeln!(out, "released {key} (it was {})", render::summary(&info))?
        }
        (true, _) => writeln!(out, "released {key} (it was held)")?,
        (false, _) => writeln!(out, "{key} was not held; nothing was released")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AdminError;
    use leasehold::{Capabilities, Error, Lease};

    /// A backend with none of the operator queries: the trait's defaults answer them.
    #[derive(Debug)]
    struct Bare;

    #[async_trait::async_trait]
    impl LockBackend for Bare {
        fn name(&self) -> &'static str {
            "bare"
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::new()
        }

        async fn try_acquire_as(
            &self,
            _key: &LockKey,
            _ttl: Duration,
            _holder: &str,
        ) -> leasehold::Result<Option<Box<dyn Lease>>> {
            Ok(None)
        }

        async fn released(&self, _key: &LockKey) -> leasehold::Result<()> {
            futures::future::pending().await
        }
    }

    fn unsupported(result: Result<(), AdminError>, operation: &str) {
        let error = result.expect_err("a backend without the query must fail");
        assert!(
            matches!(&error, AdminError::Backend(Error::Unsupported { .. })),
            "{error:?}"
        );
        assert_eq!(
            error.chain(),
            format!("the bare backend does not support {operation}")
        );
        assert_eq!(error.exit_code(), std::process::ExitCode::from(1));
    }

    #[tokio::test]
    async fn a_backend_without_operator_queries_is_a_clear_error() {
        let mut out = Vec::new();
        unsupported(list(&Bare, "", false, &mut out).await, "list");
        unsupported(show(&Bare, "job", false, &mut out).await, "describe");
        unsupported(release(&Bare, "job", true, &mut out).await, "force_release");
        assert!(out.is_empty(), "nothing is printed on error");
    }

    #[tokio::test]
    async fn release_without_force_still_refuses_when_describe_is_unsupported() {
        let mut out = Vec::new();
        let error = release(&Bare, "job", false, &mut out).await.unwrap_err();
        let AdminError::Refused(text) = &error else {
            panic!("{error:?}");
        };
        assert!(text.contains("cannot tell who holds job"), "{text}");
        assert!(text.contains("On bare, forcing frees the key"), "{text}");
    }
}
