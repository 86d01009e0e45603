//! Unit tests of the builder's server kind: the last call decides it (no server needed).

use super::*;

fn kind(builder: &RedisBackendBuilder) -> &'static str {
    match (&builder.settings.sentinel, &builder.settings.cluster) {
        (Some(_), None) => "sentinel",
        (None, Some(_)) => "cluster",
        (None, None) => "single",
        (Some(_), Some(_)) => "both",
    }
}

#[test]
fn the_last_of_address_sentinels_and_cluster_nodes_wins() {
    let builder = RedisBackendBuilder::new()
        .with_cluster_nodes(["10.0.0.1:7000"])
        .with_address("cache:6380");
    assert_eq!(
        kind(&builder),
        "single",
        "with_address turns cluster mode off"
    );
    assert_eq!(
        (builder.settings.host.as_str(), builder.settings.port),
        ("cache", 6380)
    );
    assert!(builder.settings.validate().is_ok());

    let builder = RedisBackendBuilder::new()
        .with_sentinels(["s1"])
        .with_master_name("main")
        .with_address("cache");
    assert_eq!(kind(&builder), "single", "with_address turns Sentinel off");

    let builder = RedisBackendBuilder::new()
        .with_sentinels(["s1"])
        .with_master_name("main")
        .with_cluster_nodes(["10.0.0.1:7000"]);
    assert_eq!(kind(&builder), "cluster");
    assert!(builder.settings.validate().is_ok());

    let builder = RedisBackendBuilder::new()
        .with_cluster_nodes(["10.0.0.1:7000"])
        .with_sentinels(["s1"])
        .with_master_name("main");
    assert_eq!(kind(&builder), "sentinel");
    assert!(builder.settings.validate().is_ok());

    let builder = RedisBackendBuilder::new()
        .with_url("redis+cluster://10.0.0.1:7000")
        .with_address("cache");
    assert_eq!(kind(&builder), "single", "also after a cluster URL");
    let builder = RedisBackendBuilder::new()
        .with_address("cache")
        .with_url("redis+cluster://10.0.0.1:7000");
    assert_eq!(kind(&builder), "cluster", "a later URL wins");
}

#[test]
fn from_env_then_with_address_leaves_cluster_mode() {
    let builder = RedisBackendBuilder::from_env_with(|name| {
        (name == "ROUTINE_REDIS_CLUSTER_NODES").then(|| "10.0.0.1:7000".to_owned())
    })
    .unwrap()
    .with_address("cache");
    assert_eq!(kind(&builder), "single");
}
