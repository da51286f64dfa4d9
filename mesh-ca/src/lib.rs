//! The builtin certificate authority of a mesh, as Kuma's `builtin` mTLS backend has it. The
//! global control plane generates one CA per mesh whose enabled backend is `builtin`
//! ([`MeshCa::generate`]: an RSA key of `conf.caCert.RSAbits` bits, a self-signed certificate
//! valid for `conf.caCert.expiration`) and stores it as two Secrets in that mesh
//! (`<mesh>.ca-builtin-cert-<backend>`, `<mesh>.ca-builtin-key-<backend>`), which KDS syncs to
//! every zone. A zone control plane loads it back ([`load_mesh_ca`]) and issues each proxy a
//! short-lived workload certificate ([`MeshCa::issue`]: ECDSA P-256, URI SANs
//! `spiffe://<mesh>/<service>` and `kuma://<tag>/<value>`), re-issuing it at [`renew_at`].
//! This crate holds only that logic: no I/O besides reading the two Secrets through a
//! [`mesh_store::ResourceStore`].

mod ca;
mod error;
mod secrets;
mod settings;
mod workload;

pub use ca::{MeshCa, CLOCK_SKEW};
pub use error::CaError;
pub use secrets::{cert_secret_name, key_secret_name, load_mesh_ca, read_pem_secret};
pub use settings::{
    ca_settings, workload_validity, CaSettings, DEFAULT_CA_EXPIRATION, DEFAULT_RSA_BITS,
    DEFAULT_WORKLOAD_VALIDITY, MAX_RSA_BITS, MIN_RSA_BITS,
};
pub use workload::{renew_at, WorkloadCert, WorkloadIdentity};

/// The backend type this crate serves.
pub const BUILTIN: &str = "builtin";

#[cfg(test)]
mod test_util;
