//! A new standby after a failover, so that a pair can fail over again and again.

use super::{PostgresPair, PostgresServer, Replication, base_backup, wait_until};

impl PostgresPair {
    /// After a [`failover`](Self::failover): makes a new standby by base backup from the
    /// promoted server, which becomes the pair's primary, and returns once the new standby
    /// streams (synchronously for [`Replication::Synchronous`]: the new primary is set up
    /// to wait for it, as the first one was). The killed server is dropped; the new
    /// standby listens on a new port ([`standby_port`](Self::standby_port)).
    ///
    /// # Panics
    ///
    /// If the standby was not promoted, or the new standby does not come up or stream.
    pub fn rebuild_standby(&mut self) {
        assert_eq!(
            self.standby.psql("SELECT pg_is_in_recovery()"),
            "f",
            "rebuild_standby needs a promoted standby (fail over first)"
        );
        let promoted = &self.standby;
        let Some(standby) =
            PostgresServer::start_with("pg_basebackup", |standby| base_backup(promoted, standby))
        else {
            panic!("the PostgreSQL binaries disappeared");
        };
        let promoted = std::mem::replace(&mut self.standby, standby);
        // The killed primary is dropped here.
        self.primary = promoted;
        if self.replication == Replication::Synchronous {
            self.primary
                .psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
            self.primary
                .psql("ALTER SYSTEM SET synchronous_commit = on");
            self.primary.psql("SELECT pg_reload_conf()");
        }
        let state = match self.replication {
            Replication::Synchronous => "sync",
            Replication::Asynchronous => "async",
        };
        wait_until(&format!("the new standby streams ({state})"), || {
            self.primary.psql(&format!(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE state = 'streaming' AND sync_state = '{state}'"
            )) == "1"
        });
    }
}
