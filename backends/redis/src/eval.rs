//! `Eval`: one `EVALSHA` of a script, its keys and arguments written straight into the
//! command that is sent.
//!
//! A `redis::ScriptInvocation` keeps a buffer of its own for every key and argument and
//! copies them all again into the command it builds each time it is sent: two
//! allocations and two copies per argument. The batched refresh sends 500 keys and 500
//! values per call, for every held lease at every refresh; at 100,000 leases those
//! copies, with the claims cloned for them and the frees, were about a third of the
//! samples of the process keeping its leases (BENCHMARKS.md, "Night round").

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// One call of a script: `EVALSHA <hash> <number of keys> <keys> <arguments>`.
pub(crate) struct Eval<'s> {
    script: &'s Script,
    cmd: Cmd,
}

impl<'s> Eval<'s> {
    /// A call of `script` with `keys`; add the arguments with [`arg`](Self::arg).
    pub(crate) fn new<K: ToRedisArgs>(
        script: &'s Script,
        keys: impl ExactSizeIterator<Item = K>,
    ) -> Self {
        // Room for the keys and about as many arguments as keys, each of the size of a
        // lock's value, so that the batched refresh's command grows rarely.
        let count = keys.len();
        let mut cmd = Cmd::with_capacity(3 + 2 * count + 8, 128 * (count + 1));
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(count);
        for key in keys {
            cmd.arg(key);
        }
        Self { script, cmd }
    }

    /// Adds an argument (`ARGV[i]`, in the order added).
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// The `EVALSHA` command, to send in a pipeline.
    pub(crate) fn cmd(&self) -> &Cmd {
        &self.cmd
    }

    /// Loads the script into the server's script cache.
    pub(crate) async fn load(&self, conn: &mut impl ConnectionLike) -> RedisResult<()> {
        self.script
            .prepare_invoke()
            .load_async(conn)
            .await
            .map(drop)
    }

    /// Sends the call; if the server does not have the script (`NOSCRIPT`: a new master
    /// after a failover, or a `SCRIPT FLUSH`), loads it and sends the call again.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load(conn).await?;
                self.cmd.query_async(conn).await
            }
            other => other,
        }
    }
}
