//! The process-wide default runner behind [`run`] and [`run_named`], configured from the
//! environment (the Go original's variables among others, so a service ported from Go
//! keeps its deployment settings).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use leasehold_core::HOLDER_IDENTITY_ENV;

use crate::backend_slot::BackendSlot;
use crate::env::{EnvBackend, Lookup, backend_from_env, process_env, ttl_from_env};
use crate::{Context, RoutineHandle, RunOptions, Runner};

static DEFAULT: OnceLock<Runner> = OnceLock::new();

/// The process-wide runner used by [`run`] and [`run_named`], created on first use.
///
/// Its backend comes from the environment (see [`connect`](crate::connect) and the
/// variables listed there) and is connected when the first leased routine needs it. A
/// malformed variable does not stop plain routines; leased ones end with
/// [`Outcome::Failed`](crate::Outcome::Failed) naming the variable. To see such an error
/// up front, call [`check_default_config`].
pub fn default_runner() -> &'static Runner {
    DEFAULT.get_or_init(build_default)
}

/// Checks the environment the default runner reads, without connecting anywhere: the
/// TTL, `ROUTINE_BACKEND_URL`'s scheme, `ROUTINE_HOLDER_IDENTITY` (which the runner
/// would otherwise skip for `<host>:<pid>`; see
/// [`process_identity`](crate::process_identity)), when Redis is configured by the Go
/// original's variables every `REDIS_*` variable, and with a `postgres://`
/// `ROUTINE_BACKEND_URL` (and the `postgres` feature) `ROUTINE_POSTGRES_SCHEMA`,
/// `_TABLE`, `_NAMESPACE` and `_REQUEST_TIMEOUT` (that each is UTF-8 and parses; the
/// backend checks identifier lengths when it connects).
///
/// # Errors
///
/// [`Error::Config`](crate::Error::Config) naming the first malformed variable.
pub fn check_default_config() -> crate::Result<()> {
    check_config(&process_env)
}

/// [`check_default_config`] on the variables `env` looks up.
fn check_config(env: Lookup<'_>) -> crate::Result<()> {
    ttl_from_env(env)?;
    if let Some(identity) = env(HOLDER_IDENTITY_ENV) {
        let identity = identity.to_string_lossy();
        if let Err(error) = crate::check_holder_identity(&identity) {
            return Err(crate::Error::config(
                HOLDER_IDENTITY_ENV,
                format!("not a holder identity: {error}"),
            ));
        }
    }
    backend_from_env(env)?.check_settings(env)
}

fn build_default() -> Runner {
    // The process-wide runner takes over SIGINT and SIGTERM, as the Go original does: a
    // service that only calls `run_named` still releases its leases when stopped.
    let mut builder = Runner::builder().with_signal_handling(true);
    if let Some(identity) = process_env(HOLDER_IDENTITY_ENV)
        && crate::check_holder_identity(&identity.to_string_lossy()).is_err()
    {
        tracing::warn!(
            identity = %identity.to_string_lossy(),
            fallback = crate::process_identity(),
            "default routine runner: {HOLDER_IDENTITY_ENV} is not a holder identity; using the fallback"
        );
    }
    match (ttl_from_env(&process_env), backend_from_env(&process_env)) {
        (Ok(ttl), Ok(backend)) => {
            if let Some(ttl) = ttl {
                builder = builder.with_lease_ttl(ttl);
            }
            if !matches!(backend, EnvBackend::None) {
                builder = builder.backend_slot(backend.into_lazy_slot());
            }
        }
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(error = %error.chain(), "default routine runner: bad configuration; leased routines will fail");
            builder = builder.backend_slot(BackendSlot::Invalid(Arc::new(error)));
        }
    }
    match builder.build() {
        Ok(runner) => runner,
        Err(error) => {
            tracing::error!(error = %error.chain(), "default routine runner: bad configuration; leased routines will fail");
            Runner::builder()
                .with_signal_handling(true)
                .backend_slot(BackendSlot::Invalid(Arc::new(error)))
                .build()
                .unwrap_or_else(|_| Runner::without_backend())
        }
    }
}

/// Starts `f` in the background on the [`default_runner`]; see [`Runner::run`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handle = leasehold::run(|ctx| async move {
///     tracing::info!(number = ctx.number(), "working in the background");
/// });
/// assert!(matches!(handle.join().await, leasehold::Outcome::Returned));
/// # }
/// ```
pub fn run<F, Fut>(f: F) -> RoutineHandle
where
    F: FnOnce(Context) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    default_runner().run(f)
}

/// Starts `f` with a name and options on the [`default_runner`]; see
/// [`Runner::run_named`].
pub fn run_named<F, Fut>(name: &str, f: F, options: RunOptions) -> RoutineHandle
where
    F: FnMut(Context) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    default_runner().run_named(name, f, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::tests::env;

    #[cfg(feature = "redis")]
    #[test]
    fn the_check_covers_the_redis_variables_of_the_go_configuration() {
        for (name, value) in [
            ("REDIS_DB", "two"),
            ("REDIS_HOSTS", "host:port"),
            ("REDIS_READ_TIMEOUT", "soon"),
        ] {
            let err = check_config(&env(&[(name, value)])).unwrap_err();
            assert!(
                err.to_string().contains(name),
                "a malformed {name} must be reported naming it: {err}"
            );
        }
        check_config(&env(&[
            ("REDIS_HOSTS", "127.0.0.1:6379"),
            ("REDIS_DB", "2"),
        ]))
        .expect("well-formed variables pass");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn the_check_covers_the_postgres_variables_of_a_postgres_backend_url() {
        let url = ("ROUTINE_BACKEND_URL", "postgres://db.internal/app");
        let err =
            check_config(&env(&[url, ("ROUTINE_POSTGRES_REQUEST_TIMEOUT", "soon")])).unwrap_err();
        assert!(
            matches!(&err, crate::Error::Config { setting, .. }
                if setting == "ROUTINE_POSTGRES_REQUEST_TIMEOUT"),
            "a malformed ROUTINE_POSTGRES_REQUEST_TIMEOUT must be reported naming it: {err}"
        );
        check_config(&env(&[
            url,
            ("ROUTINE_POSTGRES_SCHEMA", "ops"),
            ("ROUTINE_POSTGRES_TABLE", "fences"),
            ("ROUTINE_POSTGRES_NAMESPACE", "billing"),
            ("ROUTINE_POSTGRES_REQUEST_TIMEOUT", "1500ms"),
        ]))
        .expect("well-formed variables pass");
        // Another backend does not read them.
        check_config(&env(&[
            ("ROUTINE_BACKEND_URL", "memory://"),
            ("ROUTINE_POSTGRES_REQUEST_TIMEOUT", "soon"),
        ]))
        .expect("the PostgreSQL variables are only read for a postgres:// URL");
    }

    #[test]
    fn the_check_names_a_malformed_holder_identity() {
        let err = check_config(&env(&[(HOLDER_IDENTITY_ENV, "")])).unwrap_err();
        assert!(err.to_string().contains(HOLDER_IDENTITY_ENV), "{err}");
        check_config(&env(&[(HOLDER_IDENTITY_ENV, "web-7")])).expect("a valid identity passes");
    }

    #[test]
    fn the_check_names_a_malformed_backend_url() {
        let err = check_config(&env(&[("ROUTINE_BACKEND_URL", "nonsense")])).unwrap_err();
        assert!(err.to_string().contains("ROUTINE_BACKEND_URL"), "{err}");
    }
}
