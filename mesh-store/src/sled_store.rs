//! The sled implementation of [`crate::ResourceStore`] (placeholder: to be written).

/// A [`crate::ResourceStore`] on an embedded sled database.
#[derive(Debug)]
pub struct SledStore {}
