//! The subcommands: `list`, `show`, `watch` and `release`, each on a connected backend.

use std::io::Write;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{FutureExt as _, StreamExt as _};
use leasehold::{LockBackend, LockKey};

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

/// `watch`: prints the lease's state, then a line each time its holder changes, until
/// Ctrl-C (or SIGTERM).
///
/// The changes come from [`leasehold::observe`]: a release at once through the backend's
/// notification, anything else within `interval`. Transient errors (the server
/// restarting) are printed and the watch goes on; any other error ends it.
pub(crate) async fn watch(
    backend: Arc<dyn LockBackend>,
    name: &str,
    interval: Duration,
    out: &mut impl Write,
) -> Result<(), AdminError> {
    let key = LockKey::new(name)?;
    let mut stop = pin!(stop_signal());
    let mut changes = pin!(leasehold::observe(backend, key.clone(), interval));
    loop {
        let change = tokio::select! {
            change = changes.next() => change,
            () = &mut stop => return Ok(()),
        };
        match change {
            // The stream of changes does not end.
            None => return Ok(()),
            Some(Ok(info)) => {
                let stamp = render::rfc3339(SystemTime::now());
                match &info {
                    Some(info) => writeln!(out, "{stamp}  {key} {}", render::summary(info))?,
                    None => writeln!(out, "{stamp}  {key} is free")?,
                }
                out.flush()?;
            }
            Some(Err(error)) if error.is_transient() => eprintln!(
                "leasehold-admin: {} (retrying every {})",
                error.chain(),
                render::human(interval)
            ),
            Some(Err(error)) => return Err(error.into()),
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
