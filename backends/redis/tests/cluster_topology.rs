//! The throwaway Redis Cluster the cluster tests run on (`RedisCluster` of
//! `leasehold-conformance`): three masters with one replica each, whose master fails over
//! to its replica when killed and comes back as a replica. One test: a failover takes a
//! few seconds.

use leasehold_conformance::require_server;
use leasehold_conformance::servers::RedisCluster;

#[test]
fn a_killed_master_fails_over_to_its_replica_and_rejoins_as_a_replica() {
    let mut cluster = require_server!(RedisCluster::start());
    let masters = cluster.masters();
    assert_eq!(masters, vec![0, 1, 2], "nodes 0, 1, 2 start as the masters");
    for &master in &masters {
        assert_eq!(cluster.replicas_of(master), vec![master + 3]);
    }

    let key = "routine:lock:{topology}";
    let slot = RedisCluster::slot_of(key);
    assert_eq!(slot, RedisCluster::slot_of("routine:fence:{topology}"));
    let owner = cluster.master_of_slot(slot);
    let old = cluster.kill_master_of(key);
    assert_eq!(old, owner, "the master serving the key's slot is killed");

    let new = cluster.wait_for_failover(old);
    assert_eq!(new, old + 3, "the killed master's replica takes its slots");
    assert_eq!(cluster.master_of_slot(slot), new);

    cluster.restart(old);
    assert!(
        !cluster.masters().contains(&old),
        "the restarted node serves no slots"
    );
    assert_eq!(
        cluster.replicas_of(new),
        vec![old],
        "the restarted node is the new master's replica, in sync"
    );
}
