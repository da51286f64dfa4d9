//! What the unit tests share: backends, one CA generated once (RSA keys are slow to make), and
//! verification of a workload certificate against a CA with rustls-webpki.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::core::mesh::CaBackend;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::MeshCa;

/// A builtin backend `ca-1` with this `conf`.
pub fn builtin(conf: serde_json::Value) -> CaBackend {
    CaBackend {
        name: "ca-1".into(),
        backend_type: "builtin".into(),
        conf: Some(conf),
        ..CaBackend::default()
    }
}

/// When [`shared_ca`] was generated (a whole second, so truncation changes nothing).
pub fn shared_ca_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// A 2048-bit CA of mesh `demo`, valid for one year from [`shared_ca_time`].
pub fn shared_ca() -> &'static MeshCa {
    static CA: OnceLock<MeshCa> = OnceLock::new();
    CA.get_or_init(|| {
        MeshCa::generate_at(
            "demo",
            &builtin(serde_json::json!({"caCert": {"RSAbits": 2048, "expiration": "1y"}})),
            shared_ca_time(),
        )
        .unwrap()
    })
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Verifies `leaf_pem` chains to `ca_pem` at `at`, for both server and client use.
pub fn verify(leaf_pem: &str, ca_pem: &str, at: SystemTime) -> Result<(), webpki::Error> {
    let ca = der(ca_pem);
    let anchor = webpki::anchor_from_trusted_cert(&ca)?;
    let leaf = der(leaf_pem);
    let leaf = webpki::EndEntityCert::try_from(&leaf)?;
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &[],
            time,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}
