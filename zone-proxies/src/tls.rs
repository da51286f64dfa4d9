//! TLS contexts built from SDS secrets: the server side of inbound mTLS (client certificates
//! verified against the mesh CA), the client side of outbound mTLS (server certificate verified
//! against the trusted CA and the SAN matchers, SPIFFE URI SANs included, not against the SNI
//! name, as Envoy does), and reading the verified peer's identity. rustls with the `ring`
//! provider. Contexts are built once per configuration version, never per connection.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{DownstreamTls, Secret, UpstreamTls};
use crate::matcher::{PatternError, StringMatcher};

/// Why a TLS context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("secret {0:?} is not known (SDS has not delivered it)")]
    MissingSecret(String),
    #[error("secret {name:?}: expected {expected}")]
    WrongSecretKind {
        name: String,
        expected: &'static str,
    },
    #[error("secret {name:?}: {reason}")]
    BadPem { name: String, reason: String },
    #[error("invalid SNI {0:?}")]
    BadSni(String),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub type Secrets = BTreeMap<String, Arc<Secret>>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificate(
    secrets: &Secrets,
    name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match secrets.get(name).map(|s| s.as_ref()) {
        None => Err(TlsError::MissingSecret(name.to_string())),
        Some(Secret::Certificate { chain_pem, key_pem }) => {
            let bad = |reason: String| TlsError::BadPem {
                name: name.to_string(),
                reason,
            };
            let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("certificate chain: {e}")))?;
            if chain.is_empty() {
                return Err(bad("certificate chain: no CERTIFICATE block".into()));
            }
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .map_err(|e| bad(format!("private key: {e}")))?
                .ok_or_else(|| bad("private key: no PRIVATE KEY block".into()))?;
            Ok((chain, key))
        }
        Some(Secret::TrustedCa { .. }) => Err(TlsError::WrongSecretKind {
            name: name.to_string(),
            expected: "a certificate and key",
        }),
    }
}

fn roots(secrets: &Secrets, name: &str) -> Result<RootCertStore, TlsError> {
    match secrets.get(name).map(|s| s.as_ref()) {
        None => Err(TlsError::MissingSecret(name.to_string())),
        Some(Secret::TrustedCa { ca_pem }) => {
            let bad = |reason: String| TlsError::BadPem {
                name: name.to_string(),
                reason,
            };
            let mut store = RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                store.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if store.is_empty() {
                return Err(bad("no CA certificate".into()));
            }
            Ok(store)
        }
        Some(Secret::Certificate { .. }) => Err(TlsError::WrongSecretKind {
            name: name.to_string(),
            expected: "a trusted CA bundle",
        }),
    }
}

/// An inbound TLS context and the SAN matchers a client certificate must satisfy.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub match_san: Vec<StringMatcher>,
}

/// Builds the server side of a chain's TLS; `alpn` is offered to clients (HTTP chains offer h2).
pub fn server_tls(
    tls: &DownstreamTls,
    secrets: &Secrets,
    alpn: &[&[u8]],
) -> Result<ServerTls, TlsError> {
    let (chain, key) = certificate(secrets, &tls.certificate)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &tls.trusted_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(secrets, ca)?),
                provider(),
            );
            let verifier = if tls.require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let match_san = tls
        .match_san
        .iter()
        .map(StringMatcher::compile)
        .collect::<Result<_, _>>()?;
    Ok(ServerTls {
        config: Arc::new(config),
        match_san,
    })
}

/// An outbound TLS context with the SNI it sends.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub sni: ServerName<'static>,
}

/// Builds the client side of a cluster's TLS.
pub fn client_tls(tls: &UpstreamTls, secrets: &Secrets) -> Result<ClientTls, TlsError> {
    let match_san: Vec<StringMatcher> = tls
        .match_san
        .iter()
        .map(StringMatcher::compile)
        .collect::<Result<_, _>>()?;
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.trusted_ca {
        Some(ca) => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(secrets, ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            Arc::new(SanVerifier {
                inner: Some(inner),
                match_san,
                provider: provider(),
            })
        }
        None => Arc::new(SanVerifier {
            inner: None,
            match_san,
            provider: provider(),
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.certificate {
        Some(name) => {
            let (chain, key) = certificate(secrets, name)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let sni =
        ServerName::try_from(tls.sni.clone()).map_err(|_| TlsError::BadSni(tls.sni.clone()))?;
    Ok(ClientTls {
        config: Arc::new(config),
        sni,
    })
}

/// Verifies the chain against the trusted CA (when there is one) and the SANs against the
/// matchers; the name the client asked for (SNI) is routing, not identity, so it is not checked.
#[derive(Debug)]
struct SanVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    match_san: Vec<StringMatcher>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            match inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => {}
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.match_san.is_empty() {
            let (uris, dns) = subject_alt_names(end_entity);
            let ok = uris
                .iter()
                .chain(dns.iter())
                .any(|san| self.match_san.iter().any(|m| m.matches(san)));
            if !ok {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate's URI and DNS subject alternative names (empty when it cannot be parsed).
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> (Vec<String>, Vec<String>) {
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) {
        if let Ok(Some(ext)) = parsed.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::URI(u) => uris.push(u.to_string()),
                    x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
    }
    (uris, dns)
}

/// The verified peer's identity: its certificate's URI SANs (`spiffe://<mesh>/<service>` first
/// in Meridian's certificates), empty without a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uri_sans: Vec<String>,
}

impl PeerIdentity {
    pub fn from_certificates(certs: Option<&[CertificateDer<'_>]>) -> PeerIdentity {
        match certs.and_then(|c| c.first()) {
            Some(leaf) => PeerIdentity {
                uri_sans: subject_alt_names(leaf).0,
            },
            None => PeerIdentity::default(),
        }
    }

    /// The SPIFFE ID, if the peer presented one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uri_sans
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .map(String::as_str)
    }
}
