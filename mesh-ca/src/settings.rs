//! What a `builtin` backend's configuration asks for, with Kuma's defaults: `conf.caCert.RSAbits`
//! (2048), `conf.caCert.expiration` (10y) and `dpCert.rotation.expiration` (24h), all durations
//! in Kuma's format (`10y`, `1d`, `2h`; [`mesh_api::core::common::parse_kuma_duration`]).

use std::time::Duration;

use mesh_api::core::common::parse_kuma_duration;
use mesh_api::core::mesh::CaBackend;

use crate::{CaError, BUILTIN};

/// RSA key size of a CA whose backend sets no `conf.caCert.RSAbits` (Kuma's default).
pub const DEFAULT_RSA_BITS: usize = 2048;
/// The smallest and largest RSA keys accepted: what the signing library (ring) can sign with.
/// Kuma accepts smaller keys; they are refused here with an error naming the field.
pub const MIN_RSA_BITS: usize = 2048;
pub const MAX_RSA_BITS: usize = 8192;
/// Lifetime of a CA whose backend sets no `conf.caCert.expiration` (Kuma's default, 10 years).
pub const DEFAULT_CA_EXPIRATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a workload certificate when `dpCert.rotation.expiration` is unset (Kuma's default).
pub const DEFAULT_WORKLOAD_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The CA a `builtin` backend asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaSettings {
    pub rsa_bits: usize,
    pub expiration: Duration,
}

/// Reads `backend`'s CA settings; `mesh` is only for the error. Refuses a non-builtin backend, a
/// `conf` that does not decode, an RSA size outside [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`] and an
/// expiration that is malformed or zero.
pub fn ca_settings(mesh: &str, backend: &CaBackend) -> Result<CaSettings, CaError> {
    if backend.backend_type != BUILTIN {
        return Err(CaError::NotBuiltin {
            mesh: mesh.to_owned(),
            backend: backend.name.clone(),
            backend_type: backend.backend_type.clone(),
        });
    }
    let field = |f: &str| format!("mtls.backends[{}].{f}", backend.name);
    let config = backend.builtin_config().map_err(|e| CaError::Config {
        mesh: mesh.to_owned(),
        field: field("conf"),
        reason: e.to_string(),
    })?;
    let ca_cert = config.ca_cert.unwrap_or_default();
    let rsa_bits = match ca_cert.rsa_bits {
        None | Some(0) => DEFAULT_RSA_BITS,
        Some(bits) => bits as usize,
    };
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&rsa_bits) {
        return Err(CaError::Config {
            mesh: mesh.to_owned(),
            field: field("conf.caCert.RSAbits"),
            reason: format!(
                "{rsa_bits} is not supported: must be {MIN_RSA_BITS} to {MAX_RSA_BITS}"
            ),
        });
    }
    let expiration = if ca_cert.expiration.is_empty() {
        DEFAULT_CA_EXPIRATION
    } else {
        match parse_kuma_duration(&ca_cert.expiration) {
            Some(d) if !d.is_zero() => d,
            _ => {
                return Err(CaError::Config {
                    mesh: mesh.to_owned(),
                    field: field("conf.caCert.expiration"),
                    reason: format!(
                        "{:?} is not a positive duration such as 10y, 30d or 12h",
                        ca_cert.expiration
                    ),
                })
            }
        }
    };
    Ok(CaSettings {
        rsa_bits,
        expiration,
    })
}

/// How long a workload certificate of this backend lives: `dpCert.rotation.expiration`, else
/// [`DEFAULT_WORKLOAD_VALIDITY`]. Mesh validation refuses a malformed value, so one can only be
/// met here in a Mesh stored without validation; it (and `0`) falls back to the default rather
/// than issuing certificates that are already expired.
pub fn workload_validity(backend: &CaBackend) -> Duration {
    backend
        .dp_cert
        .as_ref()
        .and_then(|d| d.rotation.as_ref())
        .and_then(|r| parse_kuma_duration(&r.expiration))
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_WORKLOAD_VALIDITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::builtin;
    use mesh_api::core::mesh::{DpCert, Rotation};
    use serde_json::json;

    #[test]
    fn defaults_are_kumas() {
        let settings = ca_settings("m", &builtin(json!({}))).unwrap();
        assert_eq!(settings.rsa_bits, 2048);
        assert_eq!(settings.expiration, DEFAULT_CA_EXPIRATION);
        let none = CaBackend {
            conf: None,
            ..builtin(json!({}))
        };
        assert_eq!(ca_settings("m", &none).unwrap().rsa_bits, 2048);
        assert_eq!(workload_validity(&none), Duration::from_secs(86_400));
    }

    #[test]
    fn configured_values_are_read() {
        let backend = CaBackend {
            dp_cert: Some(DpCert {
                rotation: Some(Rotation {
                    expiration: "2h".into(),
                }),
                request_timeout: None,
            }),
            ..builtin(json!({"caCert": {"RSAbits": 4096, "expiration": "1y"}}))
        };
        let settings = ca_settings("m", &backend).unwrap();
        assert_eq!(settings.rsa_bits, 4096);
        assert_eq!(settings.expiration, Duration::from_secs(365 * 86_400));
        assert_eq!(workload_validity(&backend), Duration::from_secs(7200));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let err = ca_settings("m", &builtin(json!({"caCert": {"RSAbits": 1024}}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesh \"m\": mtls.backends[ca-1].conf.caCert.RSAbits: 1024 is not supported: must be 2048 to 8192"
        );
        let err =
            ca_settings("m", &builtin(json!({"caCert": {"expiration": "soon"}}))).unwrap_err();
        assert!(
            err.to_string()
                .contains("mtls.backends[ca-1].conf.caCert.expiration"),
            "{err}"
        );
        let err = ca_settings("m", &builtin(json!({"caCert": {"expiration": "0"}}))).unwrap_err();
        assert!(err.to_string().contains("not a positive duration"), "{err}");
        let err = ca_settings("m", &builtin(json!({"caCert": "nope"}))).unwrap_err();
        assert!(
            err.to_string().contains("mtls.backends[ca-1].conf:"),
            "{err}"
        );
        let provided = CaBackend {
            backend_type: "provided".into(),
            ..builtin(json!({}))
        };
        assert!(matches!(
            ca_settings("m", &provided),
            Err(CaError::NotBuiltin { .. })
        ));
    }
}
