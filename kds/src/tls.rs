//! TLS material for KDS (placeholder, being written).
