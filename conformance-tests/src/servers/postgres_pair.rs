//! A PostgreSQL primary with a streaming standby (filled in by the failover work).
