//! Certificates for TLS-enabled throwaway servers (filled in by the TLS work).
