//! Redis Cluster mode: the `redis` crate's cluster clients made from the settings, the
//! masters a `SCAN` must visit, and the slot of a key (to group batched scripts).
//!
//! The client reads the slot layout from the first seed node that answers, sends each
//! command to the master of its key's slot, and follows `MOVED`/`ASK` redirections and
//! failovers by itself (it reads the layout again when a node fails or redirects). Its
//! connection and response timeouts are the backend's connect and request timeouts, and
//! its retries (redirections, a node that just failed) are few and short: the request
//! timeout bounds a request with all its retries (the client's overall response
//! timeout), and the backend's own bound on a request is never longer.

use std::collections::HashMap;
use std::time::Duration;

use leasehold_core::{Error, Result};
use redis::aio::AsyncPushSender;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ConnectionAddr, FromRedisValue, IntoConnectionInfo, Value};

use crate::config::Settings;
use crate::config::cluster::ClusterSettings;
use crate::conn::Conn;

/// How many times the client sends a request again (after a redirection, or to a node
/// that failed) within its overall timeout.
const RETRIES: u32 = 3;
/// The longest wait between two of those retries.
const MAX_RETRY_WAIT: Duration = Duration::from_millis(200);

/// A cluster client for `cluster`'s seed nodes with the backend's credentials, TLS and
/// timeouts. `push` receives pushed messages (sharded pub/sub) over RESP3.
pub(crate) fn client(
    settings: &Settings,
    cluster: &ClusterSettings,
    push: Option<impl AsyncPushSender>,
) -> Result<ClusterClient> {
    let rejected =
        |err| Error::config_with_source("cluster_nodes", "rejected by the redis client", err);
    let nodes = cluster
        .nodes
        .iter()
        .map(|(host, port)| {
            let addr = if settings.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            };
            addr.into_connection_info()
        })
        .collect::<redis::RedisResult<Vec<_>>>()
        .map_err(rejected)?;
    let mut builder = ClusterClientBuilder::new(nodes)
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.request_timeout)
        .retries(RETRIES)
        .min_retry_wait(10)
        .max_retry_wait(u64::try_from(MAX_RETRY_WAIT.as_millis()).unwrap_or(u64::MAX));
    if let Some(username) = &settings.username {
        builder = builder.username(username);
    }
    if let Some(password) = &settings.password {
        builder = builder.password(&password.0);
    }
    if let Some(certificates) = settings.tls_files.certificates()? {
        builder = builder.certs(certificates);
    }
    if let Some(push) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push);
    }
    builder.build().map_err(rejected)
}

/// Splits `items` into the batches of one script call each, as indices into `items` in
/// order: at most `chunk` per batch and, in cluster mode (`by_slot`), the items whose
/// keys (`key_of`) are of one slot only (a script may only touch keys of one slot), so
/// one batch per slot. Without `by_slot` no key is read: at 100,000 leases reading each
/// one here was a cache miss per lease, before the same memory was read again to send it.
pub(crate) fn batches<T>(
    items: &[T],
    key_of: impl Fn(&T) -> &str,
    by_slot: bool,
    chunk: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut of_slot: HashMap<Option<u16>, usize> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let slot = by_slot.then(|| slot_of(key_of(item)));
        let group = *of_slot.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }
    groups
        .into_iter()
        .flat_map(|group| {
            group
                .chunks(chunk.max(1))
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The hash slot of `key` as Redis computes it: CRC16 (XMODEM) of its hash tag (what is
/// between the first `{` and the next `}`, if not empty) or of the whole key, modulo
/// 16384. (The `redis` crate computes it too, but does not show the number.)
pub(crate) fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tag = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16(tag.unwrap_or(bytes)) % SLOTS
}

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

/// Which master serves each slot, as `CLUSTER SLOTS` said when it was read; each master
/// is named by the first slot it serves (a command routed by that slot reaches it). It
/// may be stale: a command sent by it to a master that no longer serves the key's slot
/// is answered `MOVED`, and sent again by the key.
#[derive(Debug, Default)]
pub(crate) struct SlotMap {
    /// `(first, last, master)` per range of slots.
    ranges: Vec<(u16, u16, u16)>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: `[first, last, [host, port, id, ...], replicas...]`
    /// per range. `None` if it has another shape.
    fn parse(reply: &Value) -> Option<Self> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return None;
            };
            let number = |value: &Value| match value {
                Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (first, last) = (number(fields.first()?)?, number(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            // The node id if given, else the address.
            let node = format!("{:?}", master.get(2).or(master.get(1))?);
            let address = format!("{:?}{node}", master.first()?);
            ranges.push((first, last, address));
        }
        let mut first_of: HashMap<&str, u16> = HashMap::new();
        for (first, _, node) in &ranges {
            let entry = first_of.entry(node.as_str()).or_insert(*first);
            *entry = (*entry).min(*first);
        }
        let ranges = ranges
            .iter()
            .map(|(first, last, node)| (*first, *last, first_of[node.as_str()]))
            .collect();
        Some(Self { ranges })
    }

    /// The master of `slot` (by its first slot), if the map has it.
    pub(crate) fn master_of(&self, slot: u16) -> Option<u16> {
        self.ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, master)| *master)
    }
}

/// Reads the slot map (`CLUSTER SLOTS`, asked of any node).
pub(crate) async fn slot_map(conn: &mut Conn) -> redis::RedisResult<Option<SlotMap>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    Ok(SlotMap::parse(&reply))
}

/// Sends `pipeline` to the master that `master` (one of its slots) names, and returns
/// one reply per command, errors included as [`Value::ServerError`].
pub(crate) async fn pipeline_to(
    conn: &mut Conn,
    pipeline: redis::Pipeline,
    master: u16,
) -> redis::RedisResult<Vec<Value>> {
    let Some(cluster) = conn.cluster() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "not a cluster connection",
        )));
    };
    let count = pipeline.len();
    let route = SingleNodeRoutingInfo::SpecificNode(Route::new(master, SlotAddr::Master));
    cluster.route_pipeline(pipeline, 0, count, route).await
}

/// One slot of each master serving slots right now (`CLUSTER NODES`, asked of any node):
/// a command routed by that slot (see [`at`]) reaches that master, whatever address the
/// client knows it by (a node that never met another does not know its own address).
/// Where a `SCAN` of every key must go.
pub(crate) async fn masters(conn: &mut Conn) -> redis::RedisResult<Vec<u16>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(parse_masters(&nodes))
}

/// The first slot of each master with slots in a `CLUSTER NODES` reply, failed ones
/// left out.
fn parse_masters(nodes: &str) -> Vec<u16> {
    let mut masters: Vec<u16> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let master = flags.split(',').any(|flag| flag == "master");
            let failed = flags.split(',').any(|flag| flag == "fail");
            if !master || failed {
                return None;
            }
            // Slots are `start-end` or `slot`; `[slot->-node]` marks a migration.
            fields.get(8..)?.iter().find_map(|range| {
                range
                    .split('-')
                    .next()
                    .filter(|start| !start.starts_with('['))?
                    .parse()
                    .ok()
            })
        })
        .collect();
    masters.sort_unstable();
    masters
}

/// Sends `cmd` to every master serving slots (in cluster mode), or to the one server,
/// and returns each one's reply: for the checks at connect, which are about each server.
pub(crate) async fn each_master<T: FromRedisValue>(
    conn: &mut Conn,
    cmd: &Cmd,
) -> redis::RedisResult<Vec<T>> {
    if conn.cluster().is_none() {
        return Ok(vec![cmd.query_async(conn).await?]);
    }
    let masters = masters(conn).await?;
    let mut replies = Vec::with_capacity(masters.len());
    if let Some(cluster) = conn.cluster() {
        for master in &masters {
            let reply = cluster.route_command(cmd.clone(), at(*master)).await?;
            replies.push(redis::from_redis_value(reply)?);
        }
    }
    Ok(replies)
}

/// Routes a command to the master of `slot`.
pub(crate) fn at(slot: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
        slot,
        SlotAddr::Master,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_one_slot_each_in_cluster_mode_and_keep_order() {
        let keys = ["a:{x}", "b:{y}", "c:{x}", "d:{y}", "e:{x}"];
        assert_eq!(
            batches(&keys, |key| key, true, 2),
            [vec![0, 2], vec![4], vec![1, 3]],
            "by slot, then chunked"
        );
        assert_eq!(
            batches(&keys, |key| key, false, 2),
            [vec![0, 1], vec![2, 3], vec![4]]
        );
        assert!(batches(&[] as &[&str], |key| key, true, 2).is_empty());
    }

    #[test]
    fn slots_are_computed_as_redis_does() {
        use redis::cluster_routing::Slot;
        for key in [
            "",
            "a",
            "routine:lock:{billing}",
            "{}x",
            "a{b}c{d}",
            "{{x}}",
            "é",
        ] {
            assert_eq!(Slot::new(slot_of(key)), Some(Slot::for_key(key)), "{key:?}");
        }
        // Redis's own examples (CLUSTER KEYSLOT).
        assert_eq!(slot_of("somekey"), 11058);
        assert_eq!(slot_of("foo{hash_tag}"), slot_of("bar{hash_tag}"));
    }

    #[test]
    fn a_slot_map_names_each_master_by_its_first_slot() {
        let node = |host: &str, port: i64, id: &str| {
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port),
                Value::BulkString(id.into()),
            ])
        };
        let range = |first: i64, last: i64, master: Value| {
            Value::Array(vec![Value::Int(first), Value::Int(last), master])
        };
        let reply = Value::Array(vec![
            range(100, 200, node("h", 1, "a")),
            range(0, 99, node("h", 2, "b")),
            range(201, 16383, node("h", 1, "a")),
        ]);
        let map = SlotMap::parse(&reply).unwrap();
        assert_eq!(map.master_of(150), Some(100));
        assert_eq!(map.master_of(16000), Some(100));
        assert_eq!(map.master_of(5), Some(0));
        assert!(SlotMap::parse(&Value::Int(1)).is_none());
    }

    #[test]
    fn masters_are_the_serving_masters_that_have_not_failed() {
        let nodes = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master,fail - 0 0 3 disconnected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e 127.0.0.1:7004@17004 master - 0 0 7 connected
f 127.0.0.1:7005@17005 master - 0 0 8 connected 10923-16383
";
        assert_eq!(parse_masters(nodes), [0, 5461, 10923]);
        assert_eq!(
            parse_masters("a :7000@17000 myself,master - 0 0 1 connected [5->-b] 3 10-20"),
            [3],
            "a node that met no other has no address; a migration mark is no slot"
        );
    }
}
