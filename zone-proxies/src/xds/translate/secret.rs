//! SDS: a `Secret` -> [`crate::config::Secret`] (a certificate with its key, or a trusted CA
//! bundle). SAN matchers delivered inside an SDS validation context are refused: the model keeps
//! them on the TLS context that refers to the secret.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret as PbSecret};

use super::{data_source_text, At, FieldError, FieldResult, InlineSecrets, ResourceHandler};
use crate::config::Secret;

/// The SDS handler.
#[derive(Debug)]
pub struct SecretHandler;

impl ResourceHandler for SecretHandler {
    const TYPE_URL: &'static str = super::super::SECRET_TYPE;
    const KIND: &'static str = "secret";
    type Proto = PbSecret;
    type Model = Secret;

    fn name(proto: &PbSecret) -> &str {
        &proto.name
    }

    fn translate(proto: &PbSecret, _: &mut InlineSecrets) -> FieldResult<Option<Secret>> {
        match &proto.r#type {
            Some(secret::Type::TlsCertificate(cert)) => {
                let chain = cert
                    .certificate_chain
                    .as_ref()
                    .ok_or_else(|| FieldError::new("missing").at("certificate_chain"))
                    .and_then(|s| data_source_text(s).at("certificate_chain"))
                    .at("tls_certificate")?;
                let key = cert
                    .private_key
                    .as_ref()
                    .ok_or_else(|| FieldError::new("missing").at("private_key"))
                    .and_then(|s| data_source_text(s).at("private_key"))
                    .at("tls_certificate")?;
                Ok(Some(Secret::Certificate {
                    chain_pem: chain,
                    key_pem: key,
                }))
            }
            Some(secret::Type::ValidationContext(v)) => {
                if !v.match_typed_subject_alt_names.is_empty() {
                    return Err(FieldError::new(
                        "SAN matchers in an SDS validation context are not supported (give them \
                         in the TLS context's default_validation_context)",
                    )
                    .at("match_typed_subject_alt_names")
                    .at("validation_context"));
                }
                let ca = v
                    .trusted_ca
                    .as_ref()
                    .ok_or_else(|| FieldError::new("missing").at("trusted_ca"))
                    .and_then(|s| data_source_text(s).at("trusted_ca"))
                    .at("validation_context")?;
                Ok(Some(Secret::TrustedCa { ca_pem: ca }))
            }
            Some(secret::Type::SessionTicketKeys(_)) => {
                Err(FieldError::new("session ticket keys are not supported"))
            }
            Some(secret::Type::GenericSecret(_)) => {
                Err(FieldError::new("generic secrets are not supported"))
            }
            None => Err(FieldError::new("no secret type")),
        }
    }
}
