//! What can go wrong generating, loading or using a mesh CA. Every variant names the mesh and,
//! where there is one, the Secret or configuration field involved.

use mesh_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The backend is not a `builtin` one, so this crate does not manage its CA.
    #[error(
        "mesh {mesh:?}: mTLS backend {backend:?} is of type {backend_type:?}, not \"builtin\""
    )]
    NotBuiltin {
        mesh: String,
        backend: String,
        backend_type: String,
    },
    /// The backend's configuration cannot be used (`field` is its path in the Mesh).
    #[error("mesh {mesh:?}: {field}: {reason}")]
    Config {
        mesh: String,
        field: String,
        reason: String,
    },
    /// One of the CA's Secrets does not exist (yet: the global creates both, the zone gets them
    /// over KDS).
    #[error("mesh {mesh:?}: the CA secret {name:?} does not exist")]
    MissingSecret { mesh: String, name: String },
    /// A CA Secret (or a PEM given directly) cannot be decoded.
    #[error("mesh {mesh:?}: {name}: {reason}")]
    BadSecret {
        mesh: String,
        name: String,
        reason: String,
    },
    /// The certificate decodes but cannot sign other certificates.
    #[error("mesh {mesh:?}: {name}: not a CA certificate: {reason}")]
    NotCa {
        mesh: String,
        name: String,
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("mesh {mesh:?}: the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        mesh: String,
        cert: String,
        key: String,
    },
    /// A workload identity that cannot be put in a certificate.
    #[error("mesh {mesh:?}: invalid workload identity: {reason}")]
    InvalidIdentity { mesh: String, reason: String },
    /// Key generation or signing failed.
    #[error("mesh {mesh:?}: {what}: {reason}")]
    Crypto {
        mesh: String,
        what: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}
