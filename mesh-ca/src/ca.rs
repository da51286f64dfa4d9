//! [`MeshCa`]: a mesh's CA certificate and key, generated or loaded from PEM, and the workload
//! certificates it signs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::core::mesh::CaBackend;
use rand::RngCore;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
    PKCS_RSA_SHA256,
};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::EncodePrivateKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::public_key::PublicKey;

use crate::settings::ca_settings;
use crate::workload::{WorkloadCert, WorkloadIdentity};
use crate::CaError;

/// How far in the past certificates start, so that a peer whose clock is a little behind
/// already accepts them. (Kuma uses 10 s; a minute costs nothing and covers zones whose clocks
/// drift apart.)
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What the CA's subject says besides the mesh name (Kuma writes `O=Kuma, OU=Mesh`).
const ORGANIZATION: &str = "Meridian";
const ORGANIZATIONAL_UNIT: &str = "Mesh";

/// A mesh's certificate authority: its certificate, its key, and an issuer ready to sign
/// workload certificates. Cheap to share (`Arc`) and safe to use from many threads.
pub struct MeshCa {
    mesh: String,
    backend: String,
    cert_pem: String,
    key_pem: String,
    not_before: SystemTime,
    not_after: SystemTime,
    rsa_bits: Option<usize>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("mesh", &self.mesh)
            .field("backend", &self.backend)
            .field("not_after", &self.not_after)
            .field("rsa_bits", &self.rsa_bits)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Generates a new CA for `mesh` as its `builtin` `backend` configures it (see
    /// [`crate::ca_settings`]): an RSA key, and a self-signed certificate with subject
    /// `CN=<mesh>, O=Meridian, OU=Mesh`, URI SAN `spiffe://<mesh>`, basicConstraints CA, valid from
    /// [`CLOCK_SKEW`] ago for the configured expiration. CPU-heavy (an RSA key takes from tens of
    /// milliseconds to seconds): call it off the async runtime.
    pub fn generate(mesh: &str, backend: &CaBackend) -> Result<MeshCa, CaError> {
        MeshCa::generate_at(mesh, backend, SystemTime::now())
    }

    /// [`MeshCa::generate`] as of `now`.
    pub fn generate_at(
        mesh: &str,
        backend: &CaBackend,
        now: SystemTime,
    ) -> Result<MeshCa, CaError> {
        let settings = ca_settings(mesh, backend)?;
        let crypto = |what, e: String| CaError::Crypto {
            mesh: mesh.to_owned(),
            what,
            reason: e,
        };
        // ring cannot generate RSA keys; the `rsa` crate does, and ring signs with them.
        let rsa = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, settings.rsa_bits)
            .map_err(|e| crypto("generating the CA's RSA key", e.to_string()))?;
        let pkcs8 = rsa
            .to_pkcs8_der()
            .map_err(|e| crypto("encoding the CA's RSA key", e.to_string()))?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
            &PKCS_RSA_SHA256,
        )
        .map_err(|e| crypto("loading the CA's RSA key", e.to_string()))?;
        MeshCa::self_sign(mesh, backend, key, now)
    }

    /// A new self-signed CA certificate for an existing key (PEM, as [`MeshCa::key_pem`] or a
    /// Kuma CA key secret holds it), with the same subject, SAN and lifetime as
    /// [`MeshCa::generate`]. This completes a CA whose key was stored but whose certificate was
    /// not (a writer stopped between the two writes).
    pub fn certify_key(
        mesh: &str,
        backend: &CaBackend,
        key_pem: &str,
        now: SystemTime,
    ) -> Result<MeshCa, CaError> {
        let key = parse_key(mesh, "the CA key", key_pem)?;
        MeshCa::self_sign(mesh, backend, key, now)
    }

    fn self_sign(
        mesh: &str,
        backend: &CaBackend,
        key: KeyPair,
        now: SystemTime,
    ) -> Result<MeshCa, CaError> {
        let settings = ca_settings(mesh, backend)?;
        let crypto = |reason: String| CaError::Crypto {
            mesh: mesh.to_owned(),
            what: "signing the CA certificate",
            reason,
        };
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, ORGANIZATION);
        subject.push(DnType::OrganizationalUnitName, ORGANIZATIONAL_UNIT);
        subject.push(DnType::CommonName, mesh);
        params.distinguished_name = subject;
        params.subject_alt_names = vec![uri_san(mesh, format!("spiffe://{mesh}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before =
            to_x509_time(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH)).map_err(crypto)?;
        params.not_after = now
            .checked_add(settings.expiration)
            .ok_or_else(|| "the expiration is too far in the future".to_owned())
            .and_then(to_x509_time)
            .map_err(|reason| CaError::Config {
                mesh: mesh.to_owned(),
                field: format!("mtls.backends[{}].conf.caCert.expiration", backend.name),
                reason,
            })?;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial().to_be_bytes()));
        let cert = params
            .self_signed(&key)
            .map_err(|e| crypto(e.to_string()))?;
        MeshCa::from_pem(mesh, &backend.name, &cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and key (PEM; the key PKCS#8 `PRIVATE KEY` or PKCS#1
    /// `RSA PRIVATE KEY`, as Kuma stores it). Refuses a certificate that is not a CA (no
    /// basicConstraints CA, or a key usage without keyCertSign) and a key that is not the
    /// certificate's.
    pub fn from_pem(
        mesh: &str,
        backend: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<MeshCa, CaError> {
        MeshCa::from_named_pem(
            mesh,
            backend,
            ("the CA certificate", cert_pem),
            ("the CA key", key_pem),
        )
    }

    /// [`MeshCa::from_pem`], naming the certificate's and key's source (e.g. their Secrets) in
    /// errors.
    pub(crate) fn from_named_pem(
        mesh: &str,
        backend: &str,
        (cert_name, cert_pem): (&str, &str),
        (key_name, key_pem): (&str, &str),
    ) -> Result<MeshCa, CaError> {
        let bad = |name: &str, reason: String| CaError::BadSecret {
            mesh: mesh.to_owned(),
            name: name.to_owned(),
            reason,
        };
        let not_ca = |reason: &str| CaError::NotCa {
            mesh: mesh.to_owned(),
            name: cert_name.to_owned(),
            reason: reason.to_owned(),
        };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(cert_name, format!("no PEM certificate: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(cert_name, format!("not an X.509 certificate: {e}")))?;
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => return Err(not_ca("its basicConstraints do not say CA")),
            Err(e) => return Err(bad(cert_name, format!("bad basicConstraints: {e}"))),
        }
        match x509.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(not_ca("its key usage does not allow keyCertSign"))
            }
            Ok(_) => {}
            Err(e) => return Err(bad(cert_name, format!("bad key usage: {e}"))),
        }
        let validity = x509.validity();
        let not_before = from_unix(validity.not_before.timestamp());
        let not_after = from_unix(validity.not_after.timestamp());
        let rsa_bits = match x509.public_key().parsed() {
            Ok(PublicKey::RSA(rsa)) => Some(rsa.key_size()),
            _ => None,
        };
        let key = parse_key(mesh, key_name, key_pem)?;
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CaError::KeyMismatch {
                mesh: mesh.to_owned(),
                cert: cert_name.to_owned(),
                key: key_name.to_owned(),
            });
        }
        let key_pem = key.serialize_pem();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| bad(cert_name, format!("cannot sign with it: {e}")))?;
        Ok(MeshCa {
            mesh: mesh.to_owned(),
            backend: backend.to_owned(),
            cert_pem: pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
            key_pem,
            not_before,
            not_after,
            rsa_bits,
            issuer,
        })
    }

    /// The mesh this CA belongs to (its SPIFFE trust domain).
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The mTLS backend this CA is for.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The CA certificate (PEM): what proxies trust (the SDS validation context).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PKCS#8 PEM). Secret: it goes only into the key Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The size of the CA's RSA key, `None` for another key type.
    pub fn rsa_bits(&self) -> Option<usize> {
        self.rsa_bits
    }

    /// Issues a workload certificate for `identity`: a fresh ECDSA P-256 key; an empty subject
    /// (as Kuma's) with critical URI SANs `spiffe://<mesh>/<service>` for each service, then
    /// `kuma://<tag>/<value>` for each tag value (see [`WorkloadIdentity::uri_sans`]);
    /// basicConstraints CA:false; key usage digitalSignature + keyAgreement; extended key usage
    /// serverAuth + clientAuth. Valid from [`CLOCK_SKEW`] before `now` until `now + validity`
    /// (whole seconds), but never past the CA's own expiry. `cert_chain_pem` holds the leaf only:
    /// the CA is a root, which peers hold as their trust anchor ([`MeshCa::cert_pem`]).
    pub fn issue(
        &self,
        identity: &WorkloadIdentity,
        validity: Duration,
        now: SystemTime,
    ) -> Result<WorkloadCert, CaError> {
        let crypto = |what, reason: String| CaError::Crypto {
            mesh: self.mesh.clone(),
            what,
            reason,
        };
        if validity.is_zero() {
            return Err(CaError::Config {
                mesh: self.mesh.clone(),
                field: format!("mtls.backends[{}].dpCert.rotation.expiration", self.backend),
                reason: "a workload certificate needs a positive validity".to_owned(),
            });
        }
        if now >= self.not_after {
            return Err(crypto(
                "issuing a workload certificate",
                format!(
                    "the CA expired at {} (unix seconds)",
                    unix_seconds(self.not_after)
                ),
            ));
        }
        let sans = identity
            .uri_sans(&self.mesh)?
            .into_iter()
            .map(|uri| uri_san(&self.mesh, uri))
            .collect::<Result<Vec<_>, _>>()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| crypto("generating a workload key", e.to_string()))?;
        let not_before = truncate(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH));
        let not_after = truncate(
            now.checked_add(validity)
                .map_or(self.not_after, |t| t.min(self.not_after)),
        );
        let serial = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before =
            to_x509_time(not_before).map_err(|r| crypto("issuing a workload certificate", r))?;
        params.not_after =
            to_x509_time(not_after).map_err(|r| crypto("issuing a workload certificate", r))?;
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| crypto("signing a workload certificate", e.to_string()))?;
        Ok(WorkloadCert {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
            serial,
        })
    }
}

fn uri_san(mesh: &str, uri: String) -> Result<SanType, CaError> {
    Ia5String::try_from(uri.as_str())
        .map(SanType::URI)
        .map_err(|e| CaError::InvalidIdentity {
            mesh: mesh.to_owned(),
            reason: format!("{uri:?} cannot be a URI SAN: {e}"),
        })
}

/// Reads a private key: PKCS#8, or PKCS#1 RSA (converted to PKCS#8, which ring reads).
fn parse_key(mesh: &str, name: &str, pem: &str) -> Result<KeyPair, CaError> {
    let bad = |reason: String| CaError::BadSecret {
        mesh: mesh.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(format!("no PEM private key: {e}")))?;
    match der {
        PrivateKeyDer::Pkcs8(pkcs8) => {
            KeyPair::try_from(&pkcs8).map_err(|e| bad(format!("unusable PKCS#8 key: {e}")))
        }
        PrivateKeyDer::Pkcs1(pkcs1) => {
            let rsa = rsa::RsaPrivateKey::from_pkcs1_der(pkcs1.secret_pkcs1_der())
                .map_err(|e| bad(format!("bad PKCS#1 RSA key: {e}")))?;
            let pkcs8 = rsa
                .to_pkcs8_der()
                .map_err(|e| bad(format!("cannot re-encode the RSA key: {e}")))?;
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
                &PKCS_RSA_SHA256,
            )
            .map_err(|e| bad(format!("unusable RSA key: {e}")))
        }
        _ => Err(bad(
            "unsupported key encoding (SEC1 `EC PRIVATE KEY`): store it as PKCS#8 `PRIVATE KEY`"
                .to_owned(),
        )),
    }
}

/// A random positive serial of 127 bits (RFC 5280 allows up to 20 octets; Kuma's are random too).
fn random_serial() -> u128 {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    (u128::from_be_bytes(bytes) >> 1).max(1)
}

fn truncate(t: SystemTime) -> SystemTime {
    from_unix(unix_seconds(t))
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn from_unix(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

/// A time as a certificate holds it (whole seconds, years 1..=9999).
fn to_x509_time(t: SystemTime) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .ok()
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| "the time is past the year 9999, which X.509 cannot express".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::json;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::test_util::{builtin, der, shared_ca, shared_ca_time, verify};

    fn parse(pem: &str) -> X509Certificate<'static> {
        let der = der(pem);
        let der: &'static [u8] = Box::leak(der.to_vec().into_boxed_slice());
        X509Certificate::from_der(der).unwrap().1
    }

    fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(uri) => (*uri).to_owned(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect()
    }

    fn identity() -> WorkloadIdentity {
        let mut tags = BTreeMap::new();
        tags.insert(
            "kuma.io/service".to_owned(),
            BTreeSet::from(["web".to_owned()]),
        );
        tags.insert(
            "version".to_owned(),
            BTreeSet::from(["v1".to_owned(), "v2".to_owned()]),
        );
        WorkloadIdentity {
            services: vec!["web".into()],
            tags,
        }
    }

    #[test]
    fn a_generated_ca_is_a_self_signed_ca_naming_its_mesh() {
        let ca = shared_ca();
        let now = shared_ca_time();
        assert_eq!((ca.mesh(), ca.backend()), ("demo", "ca-1"));
        assert_eq!(ca.rsa_bits(), Some(2048));
        assert_eq!(ca.not_before(), now - CLOCK_SKEW);
        assert_eq!(ca.not_after(), now + Duration::from_secs(365 * 86_400));
        let cert = parse(ca.cert_pem());
        assert_eq!(cert.subject().to_string(), "O=Meridian, OU=Mesh, CN=demo");
        assert_eq!(cert.subject(), cert.issuer());
        assert_eq!(uris(&cert), ["spiffe://demo"]);
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert!(cert.verify_signature(None).is_ok(), "self-signed");
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn the_configured_rsa_size_is_used() {
        let ca = MeshCa::generate(
            "m",
            &builtin(json!({"caCert": {"RSAbits": 3072, "expiration": "1d"}})),
        )
        .unwrap();
        assert_eq!(ca.rsa_bits(), Some(3072));
        let cert = parse(ca.cert_pem());
        match cert.public_key().parsed().unwrap() {
            PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 3072),
            other => panic!("not RSA: {other:?}"),
        }
        let lifetime = ca.not_after().duration_since(ca.not_before()).unwrap();
        assert_eq!(lifetime, Duration::from_secs(86_400) + CLOCK_SKEW);
    }

    #[test]
    fn a_workload_certificate_verifies_and_says_exactly_who_it_is_for() {
        let ca = shared_ca();
        let now = shared_ca_time() + Duration::from_secs(3600) + Duration::from_millis(700);
        let validity = Duration::from_secs(2 * 3600);
        let cert = ca.issue(&identity(), validity, now).unwrap();
        let whole = shared_ca_time() + Duration::from_secs(3600);
        assert_eq!(cert.not_before, whole - CLOCK_SKEW);
        assert_eq!(cert.not_after, whole + validity);

        verify(&cert.cert_chain_pem, ca.cert_pem(), now).unwrap();
        let x509 = parse(&cert.cert_chain_pem);
        assert_eq!(
            uris(&x509),
            [
                "spiffe://demo/web",
                "kuma://kuma.io/service/web",
                "kuma://version/v1",
                "kuma://version/v2"
            ]
        );
        let san = x509.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.critical,
            "the subject is empty, so the SANs are critical"
        );
        assert!(x509.subject().iter().next().is_none());
        assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(x509.serial.to_u64_digits(), {
            let mut digits = vec![cert.serial as u64, (cert.serial >> 64) as u64];
            while digits.last() == Some(&0) {
                digits.pop();
            }
            digits
        });
        let stated = x509.validity();
        assert_eq!(
            from_unix(stated.not_after.timestamp()),
            cert.not_after,
            "validity as stated in the certificate"
        );
        assert!(matches!(
            x509.public_key().parsed().unwrap(),
            PublicKey::EC(_)
        ));
        // The key belongs to the certificate.
        let key = KeyPair::from_pem(&cert.key_pem).unwrap();
        assert_eq!(
            key.der_bytes(),
            x509.public_key().subject_public_key.data.as_ref()
        );

        // Outside its validity it does not verify; a certificate of another CA does not either.
        assert!(verify(
            &cert.cert_chain_pem,
            ca.cert_pem(),
            cert.not_after + Duration::from_secs(1)
        )
        .is_err());
        assert!(verify(
            &cert.cert_chain_pem,
            ca.cert_pem(),
            cert.not_before - Duration::from_secs(1)
        )
        .is_err());
        let other = MeshCa::generate("demo", &builtin(json!({}))).unwrap();
        assert!(verify(&cert.cert_chain_pem, other.cert_pem(), now).is_err());
    }

    #[test]
    fn a_workload_certificate_never_outlives_its_ca() {
        let ca = shared_ca();
        let now = ca.not_after() - Duration::from_secs(60);
        let cert = ca
            .issue(&identity(), Duration::from_secs(86_400), now)
            .unwrap();
        assert_eq!(cert.not_after, ca.not_after());
        verify(&cert.cert_chain_pem, ca.cert_pem(), now).unwrap();
        let err = ca
            .issue(&identity(), Duration::from_secs(60), ca.not_after())
            .unwrap_err();
        assert!(err.to_string().contains("the CA expired"), "{err}");
        let err = ca
            .issue(&identity(), Duration::ZERO, shared_ca_time())
            .unwrap_err();
        assert!(
            err.to_string().contains("dpCert.rotation.expiration"),
            "{err}"
        );
    }

    #[test]
    fn serials_differ() {
        let ca = shared_ca();
        let a = ca
            .issue(&identity(), Duration::from_secs(60), shared_ca_time())
            .unwrap();
        let b = ca
            .issue(&identity(), Duration::from_secs(60), shared_ca_time())
            .unwrap();
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.key_pem, b.key_pem);
    }

    #[test]
    fn a_ca_loaded_from_pem_signs_what_the_original_trusts() {
        let ca = shared_ca();
        let loaded = MeshCa::from_pem("demo", "ca-1", ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(
            (loaded.not_before(), loaded.not_after()),
            (ca.not_before(), ca.not_after())
        );
        let now = shared_ca_time();
        let cert = loaded
            .issue(&identity(), Duration::from_secs(60), now)
            .unwrap();
        verify(&cert.cert_chain_pem, ca.cert_pem(), now).unwrap();
        // The leaf names its issuer's key (authority key identifier = the CA's subject key id).
        let leaf = parse(&cert.cert_chain_pem);
        let root = parse(ca.cert_pem());
        let aki = leaf
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.clone()
                }
                _ => None,
            })
            .expect("an authority key identifier");
        let ski = root
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.clone())
                }
                _ => None,
            })
            .expect("a subject key identifier");
        assert_eq!(aki.0, ski.0);
    }

    #[test]
    fn a_pkcs1_key_as_kuma_stores_it_is_accepted() {
        let ca = shared_ca();
        let pkcs8 = PrivateKeyDer::from_pem_slice(ca.key_pem().as_bytes()).unwrap();
        let rsa = <rsa::RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(
            pkcs8.secret_der(),
        )
        .unwrap();
        let pkcs1 =
            rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_pem(&rsa, Default::default()).unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let loaded = MeshCa::from_pem("demo", "ca-1", ca.cert_pem(), &pkcs1).unwrap();
        let cert = loaded
            .issue(&identity(), Duration::from_secs(60), shared_ca_time())
            .unwrap();
        verify(&cert.cert_chain_pem, ca.cert_pem(), shared_ca_time()).unwrap();
    }

    #[test]
    fn certify_key_completes_a_ca_from_its_key_alone() {
        let ca = shared_ca();
        let backend = builtin(json!({"caCert": {"expiration": "1y"}}));
        let again = MeshCa::certify_key("demo", &backend, ca.key_pem(), shared_ca_time()).unwrap();
        assert_eq!(again.key_pem(), ca.key_pem());
        let cert = again
            .issue(&identity(), Duration::from_secs(60), shared_ca_time())
            .unwrap();
        verify(&cert.cert_chain_pem, again.cert_pem(), shared_ca_time()).unwrap();
    }

    #[test]
    fn bad_pem_is_refused_with_a_clear_error() {
        let ca = shared_ca();
        let err = MeshCa::from_pem("demo", "ca-1", "not pem", ca.key_pem()).unwrap_err();
        assert!(
            matches!(&err, CaError::BadSecret { name, .. } if name == "the CA certificate"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("mesh \"demo\": the CA certificate: no PEM certificate"),
            "{err}"
        );

        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = MeshCa::from_pem("demo", "ca-1", garbage, ca.key_pem()).unwrap_err();
        assert!(
            err.to_string().contains("not an X.509 certificate"),
            "{err}"
        );

        let err = MeshCa::from_pem("demo", "ca-1", ca.cert_pem(), "").unwrap_err();
        assert!(
            matches!(&err, CaError::BadSecret { name, .. } if name == "the CA key"),
            "{err:?}"
        );

        // A workload certificate is not a CA.
        let leaf = ca
            .issue(&identity(), Duration::from_secs(60), shared_ca_time())
            .unwrap();
        let err =
            MeshCa::from_pem("demo", "ca-1", &leaf.cert_chain_pem, &leaf.key_pem).unwrap_err();
        assert!(matches!(err, CaError::NotCa { .. }), "{err:?}");

        // Another key than the certificate's.
        let err = MeshCa::from_pem("demo", "ca-1", ca.cert_pem(), &leaf.key_pem).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "mesh \"demo\": the key in the CA key does not belong to the certificate in the CA certificate"
        );
    }

    #[test]
    fn identities_that_cannot_be_sans_are_refused() {
        let ca = shared_ca();
        let now = shared_ca_time();
        let none = WorkloadIdentity::default();
        let err = ca.issue(&none, Duration::from_secs(60), now).unwrap_err();
        assert!(err.to_string().contains("no service"), "{err}");
        let spaced = WorkloadIdentity {
            services: vec!["my web".into()],
            ..WorkloadIdentity::default()
        };
        let err = ca.issue(&spaced, Duration::from_secs(60), now).unwrap_err();
        assert!(err.to_string().contains("service \"my web\""), "{err}");
    }
}
