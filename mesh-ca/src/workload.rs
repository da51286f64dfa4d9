//! Who a workload certificate is for ([`WorkloadIdentity`]), what issuing one gives
//! ([`WorkloadCert`]), and when to issue the next one ([`renew_at`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use mesh_api::core::dataplane::DataplaneSpec;
use mesh_api::SERVICE_TAG;

use crate::CaError;

/// The identity a proxy's certificate proves: the services it serves and all its tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadIdentity {
    /// `kuma.io/service` values; each becomes `spiffe://<mesh>/<service>`.
    pub services: Vec<String>,
    /// Tag name -> values; each pair becomes `kuma://<tag>/<value>`.
    pub tags: BTreeMap<String, BTreeSet<String>>,
}

impl WorkloadIdentity {
    /// A Dataplane's identity as Kuma derives it: its services (inbounds', or its gateway's), and
    /// every tag of its inbounds and gateway, `kuma.io/service` included.
    pub fn from_dataplane(spec: &DataplaneSpec) -> WorkloadIdentity {
        let mut services: Vec<String> = spec.services().into_iter().map(str::to_owned).collect();
        services.sort();
        services.dedup();
        let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let inbound_tags = spec.inbounds().iter().map(|i| &i.tags);
        for map in inbound_tags.chain(spec.gateway().map(|g| &g.tags)) {
            for (name, value) in map {
                tags.entry(name.clone()).or_default().insert(value.clone());
            }
        }
        WorkloadIdentity { services, tags }
    }

    /// The URI SANs, in order: `spiffe://<mesh>/<service>` for each service (duplicates dropped),
    /// then `kuma://<tag>/<value>` for each tag value in name, then value order, exactly as Kuma
    /// writes them (so `kuma.io/service` appears in both forms when it is among the tags). Needs at
    /// least one service; names and values must be non-empty printable ASCII without spaces.
    pub fn uri_sans(&self, mesh: &str) -> Result<Vec<String>, CaError> {
        let invalid = |reason: String| CaError::InvalidIdentity {
            mesh: mesh.to_owned(),
            reason,
        };
        let check = |what: &str, text: &str| {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
                Err(invalid(format!(
                    "{what} {text:?} must be non-empty printable ASCII without spaces"
                )))
            } else {
                Ok(())
            }
        };
        if self.services.is_empty() {
            return Err(invalid(format!(
                "no service: a workload certificate names at least one {SERVICE_TAG}"
            )));
        }
        let mut sans = Vec::new();
        for service in &self.services {
            check("service", service)?;
            let uri = format!("spiffe://{mesh}/{service}");
            if !sans.contains(&uri) {
                sans.push(uri);
            }
        }
        for (name, values) in &self.tags {
            check("tag", name)?;
            for value in values {
                check(&format!("tag {name:?} value"), value)?;
                sans.push(format!("kuma://{name}/{value}"));
            }
        }
        Ok(sans)
    }
}

/// A workload certificate and its key, as SDS delivers them.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCert {
    /// The leaf certificate (PEM).
    pub cert_chain_pem: String,
    /// Its ECDSA P-256 key (PKCS#8 PEM).
    pub key_pem: String,
    /// The validity the certificate states (whole seconds).
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: u128,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("serial", &format_args!("{:x}", self.serial))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// When to issue `cert`'s successor: after 4/5 of its lifetime, as Kuma's SDS does, so a
/// proxy always holds a certificate with a fifth of its life left.
pub fn renew_at(cert: &WorkloadCert) -> SystemTime {
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    cert.not_before + lifetime * 4 / 5
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn renewal_is_due_after_four_fifths_of_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cert = WorkloadCert {
            cert_chain_pem: String::new(),
            key_pem: String::new(),
            not_before: start,
            not_after: start + Duration::from_secs(1000),
            serial: 1,
        };
        assert_eq!(renew_at(&cert), start + Duration::from_secs(800));
    }

    #[test]
    fn a_dataplane_identity_has_its_services_and_every_tag() {
        let yaml = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags:\n        kuma.io/service: web\n        version: v1\n    - port: 8081\n      tags:\n        kuma.io/service: admin\n        version: v2\n    - port: 8082\n      tags:\n        kuma.io/service: web\n";
        let resource = mesh_api::parse_documents(yaml).remove(0).unwrap().resource;
        let mesh_api::Spec::Dataplane(spec) = &resource.spec else {
            panic!("not a Dataplane");
        };
        let identity = WorkloadIdentity::from_dataplane(spec);
        assert_eq!(identity.services, ["admin", "web"]);
        assert_eq!(
            identity.uri_sans("default").unwrap(),
            [
                "spiffe://default/admin",
                "spiffe://default/web",
                "kuma://kuma.io/service/admin",
                "kuma://kuma.io/service/web",
                "kuma://version/v1",
                "kuma://version/v2",
            ]
        );
    }
}
