//! What a Redis Cluster node says of the cluster: its `CLUSTER NODES` lines, parsed, and
//! the hash slot of a key, computed as Redis computes it.

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// One line of `CLUSTER NODES`: one node as the node asked sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeLine {
    /// The node's 40-character id.
    pub(super) id: String,
    /// Its client port (`127.0.0.1:<port>@<bus port>`).
    pub(super) port: u16,
    /// `master` or `slave`, `myself`, `fail`, `fail?`, `handshake`, `noaddr`, ...
    pub(super) flags: Vec<String>,
    /// The id of the master it replicates, if it is a replica.
    pub(super) master_id: Option<String>,
    /// The configuration epoch of the node (of its master, for a replica).
    pub(super) config_epoch: u64,
    /// The slot ranges it serves, inclusive (importing and migrating slots left out).
    pub(super) slots: Vec<(u16, u16)>,
}

impl NodeLine {
    /// Whether the node carries `flag`.
    pub(super) fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Whether it serves `slot`.
    pub(super) fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| first <= slot && slot <= last)
    }

    /// Parses one line:
    /// `<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping> <pong> <epoch> <link> <slot>...`.
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let address = fields[1].split('@').next()?;
        let port = address.rsplit(':').next()?.parse().ok()?;
        let slots = fields[8..]
            .iter()
            .filter(|slot| !slot.starts_with('['))
            .filter_map(|slot| match slot.split_once('-') {
                Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                None => slot.parse().ok().map(|s| (s, s)),
            })
            .collect();
        Some(Self {
            id: fields[0].to_owned(),
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            config_epoch: fields[6].parse().ok()?,
            slots,
        })
    }
}

/// Parses the reply of `CLUSTER NODES`, one [`NodeLine`] per node; lines it cannot read
/// are left out.
pub(super) fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines().filter_map(NodeLine::parse).collect()
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag, the part between the first
/// `{` and the next `}` when that part is not empty, else of the whole key, modulo 16384.
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// CRC16-CCITT as XMODEM computes it (polynomial 0x1021, initial value 0), Redis
/// Cluster's key hash.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `CLUSTER KEYSLOT` gives for these keys on Redis 7.
    #[test]
    fn slots_are_those_redis_computes_with_hash_tags() {
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"somekey"), 11058);
        assert_eq!(
            slot_of(b"{foo}bar"),
            slot_of(b"foo"),
            "the tag alone is hashed"
        );
        assert_eq!(
            slot_of(b"routine:lock:{a}"),
            slot_of(b"routine:fence:{a}"),
            "keys with one tag share a slot"
        );
        assert_eq!(
            slot_of(b"foo{}bar"),
            14292,
            "an empty tag hashes the whole key"
        );
        assert_eq!(
            slot_of(b"foo{{bar}}zap"),
            slot_of(b"{bar"),
            "up to the first `}}`"
        );
    }

    #[test]
    fn node_lines_are_read() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
e7d1 127.0.0.1:30001@31001,host myself,master - 0 0 1 connected 0-5460 7000 [93-<-292f]
6ec2 127.0.0.1:30002@31002 master,fail - 1426238316232 1426238315228 2 disconnected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].master_id.as_deref(), Some("e7d1"));
        assert!(nodes[0].has("slave") && nodes[0].slots.is_empty());
        assert_eq!(nodes[1].port, 30001);
        assert_eq!(nodes[1].slots, vec![(0, 5460), (7000, 7000)]);
        assert!(nodes[1].serves(7000) && !nodes[1].serves(6000));
        assert!(nodes[2].has("fail") && nodes[2].master_id.is_none());
        assert_eq!(nodes[2].config_epoch, 2);
    }
}
