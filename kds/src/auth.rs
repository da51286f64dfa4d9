//! Zone identity: signed zone tokens (placeholder, being written).
