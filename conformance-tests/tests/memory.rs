//! The whole conformance suite on `MemoryBackend`: every client is a clone of one shared
//! backend, as every process would share one server.

use std::sync::LazyLock;

use leasehold::MemoryBackend;

static SHARED: LazyLock<MemoryBackend> = LazyLock::new(MemoryBackend::new);

leasehold_conformance::conformance_tests!(|| async { SHARED.clone() });
