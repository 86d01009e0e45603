//! The eviction check at connect: a server that may evict keys can delete a held lock or
//! a fencing counter.

use leasehold_core::{Error, Result};

use crate::config::Settings;
use crate::connection::Connection;
use crate::error::NAME;

/// The only `maxmemory-policy` under which Redis never deletes a key to free memory.
const SAFE_POLICY: &str = "noeviction";

/// Reads the server's `maxmemory-policy` (in cluster mode, every master's) and, unless it is `noeviction`, warns, or fails
/// with [`Error::Misconfigured`] if `settings` require `noeviction`. A server that does
/// not show its configuration (`CONFIG` renamed away by a managed service, or refused to
/// our ACL user) passes: the check is skipped and logged.
pub(crate) async fn check(conn: &Connection, settings: &Settings) -> Result<()> {
    let reply = conn
        .request(
            "check eviction policy",
            settings.request_timeout,
            |mut conn| async move {
                let mut get = redis::cmd("CONFIG");
                get.arg("GET").arg("maxmemory-policy");
                let replies = crate::cluster::each_master::<Vec<String>>(&mut conn, &get).await?;
                // In cluster mode, a master that may evict, if any.
                let evicting = replies
                    .iter()
                    .position(|reply| reply.get(1).is_some_and(|policy| policy != SAFE_POLICY));
                Ok(replies
                    .into_iter()
                    .nth(evicting.unwrap_or(0))
                    .unwrap_or_default())
            },
        )
        .await;
    let policy = match reply.map(<[String; 2]>::try_from) {
        Ok(Ok([_, policy])) => policy,
        Ok(Err(reply)) => return not_checked(settings, &format!("unexpected reply {reply:?}")),
        Err(err) => return not_checked(settings, &err.chain()),
    };
    if policy == SAFE_POLICY {
        return Ok(());
    }
    let reason = format!(
        "maxmemory-policy is `{policy}`: under memory pressure Redis may delete a held lock \
         (two instances then run) or a fencing counter (tokens start over); set it to \
         `{SAFE_POLICY}`"
    );
    if settings.require_noeviction {
        return Err(Error::misconfigured(NAME, reason));
    }
    tracing::warn!(
        maxmemory_policy = %policy,
        "the redis lease backend's server may evict keys: {reason}"
    );
    Ok(())
}

/// The policy could not be read: logged, and accepted.
fn not_checked(settings: &Settings, why: &dyn std::fmt::Display) -> Result<()> {
    if settings.require_noeviction {
        tracing::warn!(
            error = %why,
            "could not read the redis maxmemory-policy; noeviction is required but cannot be checked"
        );
    } else {
        tracing::debug!(error = %why, "could not read the redis maxmemory-policy; not checked");
    }
    Ok(())
}
