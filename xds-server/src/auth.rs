//! Proxy identity. A proxy's node id names its Dataplane, `<mesh>/<name>` (or Kuma's
//! `<mesh>.<name>`), and it presents a dataplane token as `authorization: Bearer` metadata. Tokens
//! are signed with `kds::auth`'s HMAC key machinery (subject `<mesh>/<name>`) with keys kept in
//! the store (`kds::token_keys`): the mesh's `dataplane-token-signing-key-<mesh>-<N>` Secrets for a
//! Dataplane, the `zone-proxy-token-signing-key-<N>` GlobalSecrets for a zone ingress or egress.
//! In a federation the global makes them and KDS syncs them, so a zone CP that lost its data
//! directory gets them back and accepts the tokens its proxies hold. A zone token never passes as
//! a dataplane token (other keys).

use std::fmt;
use std::time::Duration;

use chrono::Utc;
use kds::auth::AuthError;
use kds::token_keys::{KeyFamily, StoreKeys};

/// What a proxy runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    /// A service's sidecar: a Dataplane of a mesh.
    Dataplane,
    /// The zone's ingress (a ZoneIngress, serving every mesh).
    ZoneIngress,
    /// The zone's egress (a ZoneEgress, serving every mesh).
    ZoneEgress,
}

/// A proxy's identity: the resource it runs for.
///
/// Node ids: `<mesh>/<name>` or Kuma's `<mesh>.<name>` for a Dataplane; `ingress:<name>` and
/// `egress:<name>` for a ZoneIngress and ZoneEgress (mesh names are RFC 1123 labels, so `:`
/// cannot be confused with a mesh). `mesh` is empty for ingresses and egresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId {
    pub kind: ProxyKind,
    pub mesh: String,
    pub name: String,
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ProxyKind::Dataplane => write!(f, "{}/{}", self.mesh, self.name),
            ProxyKind::ZoneIngress => write!(f, "ingress:{}", self.name),
            ProxyKind::ZoneEgress => write!(f, "egress:{}", self.name),
        }
    }
}

impl ProxyId {
    /// The sidecar of Dataplane `name` in `mesh`.
    pub fn dataplane(mesh: &str, name: &str) -> ProxyId {
        ProxyId {
            kind: ProxyKind::Dataplane,
            mesh: mesh.to_string(),
            name: name.to_string(),
        }
    }

    /// Parses a node id (see [`ProxyId`]).
    pub fn parse(node_id: &str) -> Option<ProxyId> {
        let ok = |s: &str| !s.is_empty() && s.len() <= 253 && !s.contains('/');
        for (prefix, kind) in [
            ("ingress:", ProxyKind::ZoneIngress),
            ("egress:", ProxyKind::ZoneEgress),
        ] {
            if let Some(name) = node_id.strip_prefix(prefix) {
                return (ok(name) && !name.contains(':')).then(|| ProxyId {
                    kind,
                    mesh: String::new(),
                    name: name.to_string(),
                });
            }
        }
        let (mesh, name) = node_id
            .split_once('/')
            .or_else(|| node_id.split_once('.'))?;
        (ok(mesh) && ok(name) && !mesh.contains('.') && !mesh.contains(':'))
            .then(|| ProxyId::dataplane(mesh, name))
    }

    /// The key of the resource the proxy runs for.
    pub fn resource_key(&self) -> mesh_api::ResourceKey {
        use mesh_api::{ResourceKey, ResourceType};
        match self.kind {
            ProxyKind::Dataplane => {
                ResourceKey::new(ResourceType::Dataplane, Some(&self.mesh), &self.name)
            }
            ProxyKind::ZoneIngress => ResourceKey::new(ResourceType::ZoneIngress, None, &self.name),
            ProxyKind::ZoneEgress => ResourceKey::new(ResourceType::ZoneEgress, None, &self.name),
        }
    }
}

/// Why a proxy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneAuthError {
    #[error("dataplane token: {0}")]
    Token(#[from] AuthError),
    #[error("dataplane token was issued for {token_for}, not for {claimed}")]
    Mismatch { token_for: String, claimed: String },
}

impl From<DataplaneAuthError> for tonic::Status {
    fn from(err: DataplaneAuthError) -> Self {
        match err {
            DataplaneAuthError::Token(
                AuthError::Io { .. } | AuthError::Store(_) | AuthError::BadKeyResource { .. },
            ) => tonic::Status::internal("dataplane token verification failed"),
            DataplaneAuthError::Token(e @ AuthError::NoKeyYet { .. }) => {
                tonic::Status::unavailable(e.to_string())
            }
            DataplaneAuthError::Token(e) => tonic::Status::unauthenticated(format!(
                "dataplane token refused: {}",
                e.to_string().replace("zone token", "token")
            )),
            e @ DataplaneAuthError::Mismatch { .. } => {
                tonic::Status::permission_denied(e.to_string())
            }
        }
    }
}

/// Issues and verifies dataplane tokens with the signing keys of the store.
#[derive(Debug, Clone)]
pub struct DataplaneAuthenticator {
    keys: StoreKeys,
}

impl DataplaneAuthenticator {
    /// Signs and verifies with `keys` (owned by a standalone zone, synced from the global in a
    /// federation; see [`kds::token_keys::KeyOwnership`]).
    pub fn new(keys: StoreKeys) -> Self {
        DataplaneAuthenticator { keys }
    }

    /// The key family `proxy`'s tokens are signed with.
    pub fn family(proxy: &ProxyId) -> KeyFamily {
        match proxy.kind {
            ProxyKind::Dataplane => KeyFamily::dataplane_tokens(&proxy.mesh),
            ProxyKind::ZoneIngress | ProxyKind::ZoneEgress => KeyFamily::zone_proxy_tokens(),
        }
    }

    /// A token for `proxy`, valid for `valid_for`.
    pub async fn issue(&self, proxy: &ProxyId, valid_for: Duration) -> Result<String, AuthError> {
        self.keys
            .issue(
                &Self::family(proxy),
                &proxy.to_string(),
                valid_for,
                Utc::now(),
            )
            .await
            .map(|(token, _)| token)
    }

    /// Checks the stream's bearer token for `proxy`.
    pub async fn verify_metadata(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        proxy: &ProxyId,
    ) -> Result<(), DataplaneAuthError> {
        let token = kds::auth::bearer_token(metadata)?;
        let claimed = proxy.to_string();
        let verified = self
            .keys
            .verify(&Self::family(proxy), token, &claimed, Utc::now())
            .await;
        match verified {
            Ok(_) => Ok(()),
            Err(AuthError::ZoneMismatch {
                token_zone,
                claimed,
            }) => Err(DataplaneAuthError::Mismatch {
                token_for: token_zone,
                claimed,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        let id = ProxyId::parse("default/web-1").unwrap();
        assert_eq!((id.mesh.as_str(), id.name.as_str()), ("default", "web-1"));
        let id = ProxyId::parse("default.web-1.ns").unwrap();
        assert_eq!(
            (id.mesh.as_str(), id.name.as_str()),
            ("default", "web-1.ns")
        );
        assert!(ProxyId::parse("nomesh").is_none());
        assert!(ProxyId::parse("/x").is_none());
        assert!(ProxyId::parse("a/b/c").is_none());
        let id = ProxyId::parse("ingress:zone-1-ingress").unwrap();
        assert_eq!(id.kind, ProxyKind::ZoneIngress);
        assert_eq!(id.to_string(), "ingress:zone-1-ingress");
        assert_eq!(
            ProxyId::parse("egress:e1").unwrap().kind,
            ProxyKind::ZoneEgress
        );
        assert!(ProxyId::parse("ingress:").is_none());
    }
}
