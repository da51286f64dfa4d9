//! Downstream and upstream TLS contexts (transport sockets of listeners' filter chains and of
//! clusters) -> [`DownstreamTls`] / [`UpstreamTls`]. Certificates come by SDS name; trust either by
//! SDS name or inline (an inline bundle becomes a named secret, see [`InlineSecrets`]).

use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
};
use prost::Name as _;

use super::{type_name, unpack, value_match, At, FieldError, FieldResult, InlineSecrets};
use crate::config::{DownstreamTls, UpstreamTls, ValueMatch};

/// The transport socket names that mean "no TLS".
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// SAN matchers with the SAN type each applies to.
type SanMatchers = Vec<(SanType, ValueMatch)>;

/// What a common TLS context says, before it is shaped for one direction.
struct Common {
    certificate: Option<String>,
    trusted_ca: Option<String>,
    match_san: Vec<(SanType, ValueMatch)>,
    alpn: Vec<String>,
}

fn common(ctx: &CommonTlsContext, secrets: &mut InlineSecrets) -> FieldResult<Common> {
    if !ctx.tls_certificates.is_empty() {
        return Err(
            FieldError::new("inline certificates are not supported; deliver them by SDS")
                .at("tls_certificates"),
        );
    }
    let certificate = match ctx.tls_certificate_sds_secret_configs.as_slice() {
        [] => None,
        [one] => Some(one.name.clone()),
        _ => {
            return Err(
                FieldError::new("more than one certificate is not supported")
                    .at("tls_certificate_sds_secret_configs"),
            )
        }
    };
    let (trusted_ca, validation) = match &ctx.validation_context_type {
        None => (None, None),
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            (Some(sds.name.clone()), None)
        }
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let sds = combined
                .validation_context_sds_secret_config
                .as_ref()
                .map(|s| s.name.clone());
            let default = combined.default_validation_context.as_ref();
            if default.is_some_and(|d| d.trusted_ca.is_some()) && sds.is_some() {
                return Err(FieldError::new(
                    "a trusted CA both inline and by SDS is not supported",
                )
                .at("trusted_ca")
                .at("default_validation_context")
                .at("combined_validation_context"));
            }
            (sds, default)
        }
        Some(ValidationContextType::ValidationContext(v)) => (None, Some(v)),
        #[allow(deprecated)]
        Some(_) => {
            return Err(FieldError::new("certificate providers are not supported")
                .at("validation_context_type"))
        }
    };
    let mut match_san = Vec::new();
    let mut trusted_ca = trusted_ca;
    if let Some(v) = validation {
        let field = match ctx.validation_context_type {
            Some(ValidationContextType::CombinedValidationContext(_)) => {
                "combined_validation_context.default_validation_context"
            }
            _ => "validation_context",
        };
        let (ca, sans) = validation_context(v, secrets).at(field)?;
        if ca.is_some() {
            trusted_ca = ca;
        }
        match_san = sans;
    }
    Ok(Common {
        certificate,
        trusted_ca,
        match_san,
        alpn: ctx.alpn_protocols.clone(),
    })
}

fn validation_context(
    v: &CertificateValidationContext,
    secrets: &mut InlineSecrets,
) -> FieldResult<(Option<String>, SanMatchers)> {
    let ca = v
        .trusted_ca
        .as_ref()
        .map(|source| secrets.trusted_ca(source).at("trusted_ca"))
        .transpose()?;
    let mut sans = Vec::new();
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let at = |e: FieldError| e.at(format!("[{i}]")).at("match_typed_subject_alt_names");
        let san_type = SanType::try_from(m.san_type).unwrap_or(SanType::Unspecified);
        if !matches!(san_type, SanType::Uri | SanType::Dns) {
            return Err(at(FieldError::new(format!(
                "SAN type {} is not supported (URI and DNS are)",
                san_type.as_str_name()
            ))
            .at("san_type")));
        }
        let matcher = m
            .matcher
            .as_ref()
            .ok_or_else(|| FieldError::new("missing").at("matcher"))
            .and_then(|m| value_match(m).at("matcher"))
            .map_err(at)?;
        sans.push((san_type, matcher));
    }
    #[allow(deprecated)]
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        let matcher = value_match(m)
            .at(format!("[{i}]"))
            .at("match_subject_alt_names")?;
        sans.push((SanType::Unspecified, matcher));
    }
    if !v.verify_certificate_spki.is_empty() || !v.verify_certificate_hash.is_empty() {
        return Err(FieldError::new("certificate pinning is not supported"));
    }
    Ok((ca, sans))
}

/// The typed config of a TLS transport socket, or `None` for a plain one.
fn tls_config(
    socket: &TransportSocket,
) -> FieldResult<Option<&envoy_types::pb::google::protobuf::Any>> {
    match &socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) if any.type_url == RAW_BUFFER => {
            Ok(None)
        }
        Some(transport_socket::ConfigType::TypedConfig(any)) => Ok(Some(any)),
        None if socket.name == "envoy.transport_sockets.raw_buffer" => Ok(None),
        None => Err(FieldError::new(format!(
            "transport socket {:?} has no typed_config",
            socket.name
        ))),
    }
}

/// A filter chain's transport socket: TLS termination, or `None` for plaintext.
pub fn downstream(
    socket: &TransportSocket,
    secrets: &mut InlineSecrets,
) -> FieldResult<Option<DownstreamTls>> {
    let Some(any) = tls_config(socket)? else {
        return Ok(None);
    };
    if any.type_url != DownstreamTlsContext::type_url() {
        return Err(FieldError::new(format!(
            "unsupported transport socket {}",
            type_name(&any.type_url)
        ))
        .at("typed_config"));
    }
    let ctx: DownstreamTlsContext = unpack(any).at("typed_config")?;
    let common = ctx
        .common_tls_context
        .as_ref()
        .map(|c| common(c, secrets))
        .transpose()
        .at("common_tls_context")
        .at("typed_config")?
        .ok_or_else(|| {
            FieldError::new("missing")
                .at("common_tls_context")
                .at("typed_config")
        })?;
    let certificate = common.certificate.ok_or_else(|| {
        FieldError::new("a TLS server needs a certificate")
            .at("tls_certificate_sds_secret_configs")
            .at("common_tls_context")
            .at("typed_config")
    })?;
    let mut match_san = Vec::new();
    for (san_type, m) in common.match_san {
        if san_type == SanType::Dns {
            return Err(
                FieldError::new("client certificates are matched on URI SANs only")
                    .at("san_type")
                    .at("common_tls_context")
                    .at("typed_config"),
            );
        }
        match_san.push(m);
    }
    Ok(Some(DownstreamTls {
        certificate,
        trusted_ca: common.trusted_ca,
        require_client_certificate: ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| b.value),
        match_san,
    }))
}

/// A cluster's (or a transport socket match's) transport socket: TLS origination, or `None`.
pub fn upstream(
    socket: &TransportSocket,
    secrets: &mut InlineSecrets,
) -> FieldResult<Option<UpstreamTls>> {
    let Some(any) = tls_config(socket)? else {
        return Ok(None);
    };
    if any.type_url != UpstreamTlsContext::type_url() {
        return Err(FieldError::new(format!(
            "unsupported transport socket {}",
            type_name(&any.type_url)
        ))
        .at("typed_config"));
    }
    let ctx: UpstreamTlsContext = unpack(any).at("typed_config")?;
    let common = match &ctx.common_tls_context {
        Some(c) => common(c, secrets)
            .at("common_tls_context")
            .at("typed_config")?,
        None => Common {
            certificate: None,
            trusted_ca: None,
            match_san: Vec::new(),
            alpn: Vec::new(),
        },
    };
    Ok(Some(UpstreamTls {
        sni: ctx.sni.clone(),
        certificate: common.certificate,
        trusted_ca: common.trusted_ca,
        match_san: common.match_san.into_iter().map(|(_, m)| m).collect(),
        alpn: common.alpn,
    }))
}
