//! Where the commands go: one fixed server, or the master the sentinels name.
//!
//! With Sentinel, the master is found by the `redis` crate's own Sentinel client
//! ([`redis::sentinel::Sentinel::async_master_for`]), which asks the sentinels in turn and
//! checks with `ROLE` that the server they name is a master. Before that, every sentinel
//! is asked `SENTINEL MASTER <name>` for its view: the address and the `config-epoch`.
//! Those views tell apart "no sentinel reachable" and "no sentinel knows that master
//! name" (clear errors at connect), and give the **epoch** of the master in use: the
//! highest `config-epoch` any reachable sentinel reports, which must name the master the
//! crate found. Sentinel gives every failover a `config-epoch` higher than all before
//! it, so the epoch of the master in use only grows; the acquire script uses it as a
//! floor under the fencing counter (see [`crate::scripts::ACQUIRE`]).
//!
//! With TLS (`rediss+sentinel://`) both the sentinels and the servers they name are
//! reached over TLS with the same files (CA, client certificate): the lookup is the
//! crate's [`SentinelClient`], which takes certificates for both sides. A TLS failure
//! with every sentinel is the typed error a `rediss://` connection gives.

use std::fmt;
use std::time::Duration;

use futures::future::join_all;
use leasehold_core::{Error, Result};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, TlsMode,
};

use crate::config::Settings;
use crate::config::sentinel::{SentinelSettings, address};
use crate::error::{self, NAME};

const OPERATION: &str = "locate the master";

/// Where the command and pub/sub connections go.
// One per backend, behind an `Arc`: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Target {
    /// One server at a fixed address.
    Fixed(redis::Client),
    /// The master the sentinels name, asked again whenever it may have moved.
    Sentinel(SentinelTarget),
    /// A Redis Cluster: the `redis` crate's cluster client finds each slot's master.
    Cluster(redis::cluster::ClusterClient),
}

/// A master found: a client for it, its address and its epoch (0 without Sentinel).
pub(crate) struct Located {
    pub(crate) client: redis::Client,
    pub(crate) address: String,
    pub(crate) epoch: u64,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Fixed(client) => write!(f, "{:?}", client.get_connection_info().addr()),
            Target::Sentinel(sentinel) => write!(
                f,
                "master `{}` of the sentinels {}",
                sentinel.settings.master_name,
                sentinel.settings.addresses()
            ),
            Target::Cluster(_) => f.write_str("redis cluster"),
        }
    }
}

impl Target {
    /// The server to connect to now.
    pub(crate) async fn locate(&self) -> Result<Located> {
        match self {
            Target::Fixed(client) => Ok(Located {
                address: format!("{:?}", client.get_connection_info().addr()),
                client: client.clone(),
                epoch: 0,
            }),
            Target::Sentinel(sentinel) => sentinel.locate(None).await.and_then(|located| {
                located.ok_or_else(|| Error::unavailable(NAME, OPERATION, "no master located"))
            }),
            Target::Cluster(_) => Err(Error::unavailable(
                NAME,
                OPERATION,
                "a cluster has no single server: each slot has its master",
            )),
        }
    }

    /// The server to connect to now, or `None` if it is still `address` in `epoch`
    /// (behind Sentinel, that is found out from the sentinels' views alone, without
    /// connecting to the master: one that is paused would hold the check up). A fixed
    /// server never moves.
    pub(crate) async fn locate_if_moved(
        &self,
        address: &str,
        epoch: u64,
    ) -> Result<Option<Located>> {
        match self {
            Target::Fixed(_) | Target::Cluster(_) => Ok(None),
            Target::Sentinel(sentinel) => sentinel.locate(Some((address, epoch))).await,
        }
    }

    /// Whether the server may move (a failover), so that connection failures are worth
    /// asking the sentinels about.
    pub(crate) fn follows_master(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }
}

/// The sentinels of one master name, and how to reach the servers they name.
pub(crate) struct SentinelTarget {
    settings: SentinelSettings,
    /// One connection info per sentinel, with the sentinels' credentials (and TLS).
    sentinels: Vec<ConnectionInfo>,
    /// The crate's Sentinel client for the master, with the master's credentials,
    /// database and TLS; it caches one connection per sentinel.
    lookup: tokio::sync::Mutex<SentinelClient>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl SentinelTarget {
    pub(crate) fn new(settings: &Settings, sentinel: &SentinelSettings) -> Result<Self> {
        let mut login = RedisConnectionInfo::default();
        if let Some(username) = &sentinel.username {
            login = login.set_username(username);
        }
        if let Some(password) = &sentinel.password {
            login = login.set_password(&password.0);
        }
        let rejected =
            |err| Error::config_with_source("sentinels", "rejected by the redis client", err);
        let certificates = match settings.tls {
            true => settings.tls_files.certificates()?,
            false => None,
        };
        let sentinels = sentinel
            .sentinels
            .iter()
            .map(|(host, port)| {
                let addr = match settings.tls {
                    true => ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    },
                    false => ConnectionAddr::Tcp(host.clone(), *port),
                };
                let info = addr
                    .into_connection_info()?
                    .set_redis_settings(login.clone());
                // The crate turns the files into the address's TLS parameters.
                match &certificates {
                    Some(certificates) => {
                        Ok(redis::Client::build_with_tls(info, certificates.clone())?
                            .get_connection_info()
                            .clone())
                    }
                    None => Ok(info),
                }
            })
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(rejected)?;
        let mut builder = SentinelClientBuilder::new(
            sentinels.iter().map(|info| info.addr().clone()),
            &sentinel.master_name,
            SentinelServerType::Master,
        )
        .map_err(rejected)?
        .set_client_to_redis_db(settings.db);
        if let Some(username) = &sentinel.username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = &sentinel.password {
            builder = builder.set_client_to_sentinel_password(&password.0);
        }
        if let Some(username) = &settings.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &settings.password {
            builder = builder.set_client_to_redis_password(&password.0);
        }
        if settings.tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        }
        if let Some(certificates) = certificates {
            builder = builder.set_client_to_redis_certificates(certificates);
        }
        let lookup = builder.build().map_err(rejected)?;
        Ok(Self {
            settings: sentinel.clone(),
            sentinels,
            lookup: tokio::sync::Mutex::new(lookup),
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
        })
    }

    /// Asks the sentinels for the master (`None` if it is still `unless_at`), bounded by
    /// the connect and request timeouts.
    async fn locate(&self, unless_at: Option<(&str, u64)>) -> Result<Option<Located>> {
        let bound = self.connect_timeout + self.request_timeout;
        tokio::time::timeout(bound, self.locate_unbounded(unless_at))
            .await
            .unwrap_or_else(|_| Err(Error::timeout(NAME, OPERATION, bound)))
    }

    async fn locate_unbounded(&self, unless_at: Option<(&str, u64)>) -> Result<Option<Located>> {
        let name = &self.settings.master_name;
        let views = join_all(self.sentinels.iter().map(|info| self.view(info))).await;
        let mut unreachable = Vec::new();
        let mut known = Vec::new();
        let mut answered = false;
        let mut tls_failure = None;
        for (view, (host, port)) in views.into_iter().zip(&self.settings.sentinels) {
            match view {
                Ok(view) => {
                    answered = true;
                    known.extend(view);
                }
                Err(Failure::Tls(err)) => {
                    unreachable.push(format!("{}: {}", address(host, *port), err.chain()));
                    tls_failure.get_or_insert(err);
                }
                Err(Failure::Other(err)) => {
                    unreachable.push(format!("{}: {err}", address(host, *port)));
                }
            }
        }
        if !answered && let Some(err) = tls_failure {
            // A TLS handshake failed (the CA, a client certificate): the same typed error
            // as a `rediss://` connection's, not "unreachable".
            return Err(err);
        }
        if !answered {
            return Err(Error::unavailable(
                NAME,
                OPERATION,
                Problem(format!(
                    "no sentinel reachable ({})",
                    unreachable.join("; ")
                )),
            ));
        }
        // The newest configuration any sentinel has: a sentinel that has not heard of
        // the last failover yet reports a lower epoch.
        let Some(epoch) = known.iter().map(|view| view.epoch).max() else {
            return Err(Error::misconfigured(
                NAME,
                format!(
                    "no sentinel of {} monitors a master named `{name}` (SENTINEL MASTER: no \
                     such master): check the master name",
                    self.settings.addresses()
                ),
            ));
        };
        let newest: Vec<&View> = known.iter().filter(|view| view.epoch == epoch).collect();
        let Some(newest) = newest.iter().find(|view| !view.down) else {
            return Err(Error::unavailable(
                NAME,
                OPERATION,
                Problem(format!(
                    "the sentinels see master `{name}` at {} down; a failover may be under way",
                    newest[0].address
                )),
            ));
        };
        if unless_at == Some((newest.address.as_str(), epoch)) {
            return Ok(None);
        }
        let client = self
            .lookup
            .lock()
            .await
            .async_get_client()
            .await
            .map_err(|err| match err.kind() {
                ErrorKind::MasterNameNotFoundBySentinel => Error::unavailable(
                    NAME,
                    OPERATION,
                    Problem(format!(
                        "no sentinel names a master `{name}` that is up and says it is a \
                         master; a failover may be under way"
                    )),
                ),
                _ => error::from_redis(err, OPERATION, self.connect_timeout),
            })?;
        let address = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                address(host, *port)
            }
            other => format!("{other:?}"),
        };
        if address != newest.address {
            return Err(Error::unavailable(
                NAME,
                OPERATION,
                Problem(format!(
                    "the sentinels disagree on master `{name}` ({address}, or {} in the newest \
                     configuration); a failover may be under way",
                    newest.address
                )),
            ));
        }
        Ok(Some(Located {
            client,
            address,
            epoch: newest.epoch,
        }))
    }

    /// One sentinel's view of the master: `None` if it does not know the name.
    async fn view(&self, info: &ConnectionInfo) -> Result<Option<View>, Failure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.request_timeout));
        let client = redis::Client::open(info.clone()).map_err(|err| err.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| match error::from_tls(&err, OPERATION) {
                Some(tls) => Failure::Tls(tls),
                None => Failure::Other(err.to_string()),
            })?;
        let reply: redis::RedisResult<Vec<String>> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.settings.master_name)
            .query_async(&mut conn)
            .await;
        let fields = match reply {
            Ok(fields) => fields,
            Err(err) if err.to_string().contains("No such master") => return Ok(None),
            Err(err) if err.to_string().contains("unknown command") => {
                return Err(Failure::Other(format!("not a sentinel ({err})")));
            }
            Err(err) => return Err(Failure::Other(err.to_string())),
        };
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1))
                .map(String::as_str)
        };
        let (Some(ip), Some(port), Some(epoch)) = (
            field("ip"),
            field("port").and_then(|p| p.parse::<u16>().ok()),
            field("config-epoch").and_then(|e| e.parse::<u64>().ok()),
        ) else {
            return Err(Failure::Other(
                "SENTINEL MASTER gave no ip, port or config-epoch".to_owned(),
            ));
        };
        let flags = field("flags").unwrap_or_default();
        Ok(Some(View {
            address: address(ip, port),
            epoch,
            down: flags.contains("s_down") || flags.contains("o_down"),
        }))
    }
}

/// Why a sentinel gave no view: a TLS handshake failure, typed as for `rediss://`, or
/// anything else, in words.
enum Failure {
    Tls(Error),
    Other(String),
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Failure::Other(text)
    }
}

/// One sentinel's view of the master.
struct View {
    address: String,
    epoch: u64,
    down: bool,
}

/// What went wrong while locating the master, as the source of an error.
#[derive(Debug)]
struct Problem(String);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Problem {}
