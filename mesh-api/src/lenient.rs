//! Serde helpers that decode scalars the way Kuma does (YAML `6000` into a string tag, `"2.5"`
//! into a number), so real Kuma documents parse as written.
