//! A three-member etcd cluster on loopback whose members can be killed, restarted and cut off (filled in by the etcd-cluster work).
