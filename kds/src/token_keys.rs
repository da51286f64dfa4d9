//! Token signing keys kept as resources of the store, as Kuma keeps them, so every node of a
//! replicated global and every zone sees the same keys:
//!
//! - zone tokens: GlobalSecrets `zone-token-signing-key-<N>` and the revocation list
//!   `zone-token-revocations`. They stay at the global ([`is_global_only`]): zone tokens are
//!   HMAC-signed, so a zone holding the key could sign tokens for other zones.
//! - dataplane tokens of mesh `m`: Secrets `dataplane-token-signing-key-m-<N>` in mesh `m`
//!   (revocations `dataplane-token-revocations-m`), made by the global (a standalone zone makes
//!   its own) and synced to every zone over KDS, so a zone CP whose data directory is lost gets
//!   them back and keeps accepting its proxies' tokens.
//! - zone ingress and egress tokens: GlobalSecrets `zone-proxy-token-signing-key-<N>`, synced
//!   the same way.
//!
//! The key's id in a token (`kid`) is `N`; the newest key signs, every key present verifies, so
//! rotation is a create and retirement a delete. Key material is base64 in the Secret's `data`,
//! read through the REST API with the admin token only, like every Secret.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mesh_api::core::secret::SecretSpec;
use mesh_api::{Resource, ResourceKey, ResourceType, Spec};
use mesh_store::{ListQuery, ResourceStore, StoreError};

use crate::auth::{AuthError, KeySet, ZoneClaims};

/// Name prefix of the zone-token signing keys (GlobalSecrets).
pub const ZONE_TOKEN_KEY_PREFIX: &str = "zone-token-signing-key";
/// The GlobalSecret listing revoked zone-token ids.
pub const ZONE_TOKEN_REVOCATIONS: &str = "zone-token-revocations";
/// Name prefix of a mesh's dataplane-token signing keys (Secrets, followed by `-<mesh>`).
pub const DATAPLANE_TOKEN_KEY_PREFIX: &str = "dataplane-token-signing-key";
/// Name prefix of a mesh's dataplane-token revocation list (followed by `-<mesh>`).
pub const DATAPLANE_TOKEN_REVOCATIONS: &str = "dataplane-token-revocations";
/// Name prefix of the zone ingress and egress token signing keys (GlobalSecrets).
pub const ZONE_PROXY_TOKEN_KEY_PREFIX: &str = "zone-proxy-token-signing-key";
/// The GlobalSecret listing revoked zone ingress and egress token ids.
pub const ZONE_PROXY_TOKEN_REVOCATIONS: &str = "zone-proxy-token-revocations";

/// How long an operation that needs a key waits for one to arrive (synced keys) or for the
/// import of a key directory to finish (owned keys) before giving up.
const KEY_WAIT: Duration = Duration::from_secs(15);

/// Whether `resource` must never leave the global: the zone-token signing keys and their
/// revocation list (a zone with them could sign tokens for other zones).
pub fn is_global_only(resource: &Resource) -> bool {
    resource.resource_type() == ResourceType::GlobalSecret
        && (resource.meta.name == ZONE_TOKEN_REVOCATIONS
            || KeyFamily::zone_tokens()
                .serial_of(&resource.meta.name)
                .is_some())
}

/// One family of signing keys: where its keys and its revocation list live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFamily {
    mesh: Option<String>,
    prefix: String,
    revocations: String,
}

impl KeyFamily {
    /// The keys of zone tokens.
    pub fn zone_tokens() -> KeyFamily {
        KeyFamily {
            mesh: None,
            prefix: ZONE_TOKEN_KEY_PREFIX.to_owned(),
            revocations: ZONE_TOKEN_REVOCATIONS.to_owned(),
        }
    }

    /// The keys of mesh `mesh`'s dataplane tokens.
    pub fn dataplane_tokens(mesh: &str) -> KeyFamily {
        KeyFamily {
            mesh: Some(mesh.to_owned()),
            prefix: format!("{DATAPLANE_TOKEN_KEY_PREFIX}-{mesh}"),
            revocations: format!("{DATAPLANE_TOKEN_REVOCATIONS}-{mesh}"),
        }
    }

    /// The keys of zone ingress and egress tokens.
    pub fn zone_proxy_tokens() -> KeyFamily {
        KeyFamily {
            mesh: None,
            prefix: ZONE_PROXY_TOKEN_KEY_PREFIX.to_owned(),
            revocations: ZONE_PROXY_TOKEN_REVOCATIONS.to_owned(),
        }
    }

    fn rtype(&self) -> ResourceType {
        if self.mesh.is_some() {
            ResourceType::Secret
        } else {
            ResourceType::GlobalSecret
        }
    }

    /// The name of key `serial`.
    pub fn key_name(&self, serial: u64) -> String {
        format!("{}-{serial}", self.prefix)
    }

    /// The serial of a key of this family named `name`.
    fn serial_of(&self, name: &str) -> Option<u64> {
        let serial = name.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        serial
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0 && n.to_string() == serial)
    }

    fn key_of(&self, name: &str) -> ResourceKey {
        ResourceKey::new(self.rtype(), self.mesh.as_deref(), name)
    }

    fn secret(&self, name: &str, bytes: &[u8]) -> Resource {
        let spec = SecretSpec::from_bytes(bytes);
        let spec = match self.rtype() {
            ResourceType::Secret => Spec::Secret(spec),
            _ => Spec::GlobalSecret(spec),
        };
        Resource::new(name, self.mesh.as_deref(), spec)
    }

    /// Where the family lives, for messages.
    fn describe(&self) -> String {
        match &self.mesh {
            Some(mesh) => format!("Secrets {}-<N> of mesh {mesh}", self.prefix),
            None => format!("GlobalSecrets {}-<N>", self.prefix),
        }
    }

    /// Reads the family's keys and revocations from `store`.
    pub async fn load(&self, store: &dyn ResourceStore) -> Result<KeySet, AuthError> {
        let mut query = ListQuery::all(self.rtype());
        query.mesh = self.mesh.clone();
        query.name_prefix = Some(format!("{}-", self.prefix));
        let mut set = KeySet::default();
        for item in store.list(&query).await.map_err(AuthError::Store)?.items {
            let Some(serial) = self.serial_of(&item.meta.name) else {
                continue;
            };
            let bytes = secret_bytes(&item);
            if !bytes.is_some_and(|b| set.insert_key(serial, &b)) {
                return Err(AuthError::BadKeyResource {
                    key: item.key().to_string(),
                });
            }
        }
        if let Some(list) = store
            .get(&self.key_of(&self.revocations))
            .await
            .map_err(AuthError::Store)?
        {
            for id in revocation_ids(&list) {
                set.insert_revoked(&id);
            }
        }
        Ok(set)
    }
}

fn secret_bytes(resource: &Resource) -> Option<Vec<u8>> {
    match &resource.spec {
        Spec::Secret(s) | Spec::GlobalSecret(s) => s.bytes(),
        _ => None,
    }
}

/// The token ids of a revocation list (comma-separated, as Kuma writes them).
fn revocation_ids(resource: &Resource) -> Vec<String> {
    let bytes = secret_bytes(resource).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .split([',', '\n'])
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether this side makes keys when a family has none, or waits for them to be synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOwnership {
    /// The store is the owner's (the global, or a standalone zone): a family without keys gets
    /// its first key on first use.
    Owned,
    /// The keys come from the global over KDS (a zone in a federation): wait for them.
    Synced,
}

/// Issues and verifies tokens with signing keys read from a store at each use (a store read is
/// local and cheap; this way a rotation, retirement or revocation written through any node, or
/// synced from the global, holds at once). Cloning shares it.
#[derive(Clone)]
pub struct StoreKeys {
    store: Arc<dyn ResourceStore>,
    ownership: KeyOwnership,
    /// Keys from before they moved to the store, kept for verification only.
    legacy: Option<Arc<KeySet>>,
    /// Set once an import of such keys into the store has finished: nothing makes a key before.
    imported: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKeys")
            .field("ownership", &self.ownership)
            .field("legacy", &self.legacy)
            .finish_non_exhaustive()
    }
}

impl StoreKeys {
    /// Keys in `store`, made there when missing (`Owned`) or waited for (`Synced`).
    pub fn new(store: Arc<dyn ResourceStore>, ownership: KeyOwnership) -> StoreKeys {
        StoreKeys {
            store,
            ownership,
            legacy: None,
            imported: tokio::sync::watch::channel(true).1,
        }
    }

    /// Also accepts tokens signed with these keys (a zone CP's old key directory), which are
    /// never used to sign.
    pub fn with_legacy(mut self, legacy: Option<KeySet>) -> StoreKeys {
        self.legacy = legacy.filter(|l| !l.is_empty()).map(Arc::new);
        self
    }

    /// Makes no key until `imported` is `true` (an import of old keys is under way, and a key
    /// made meanwhile could take the serial of one being imported).
    pub fn after_import(mut self, imported: tokio::sync::watch::Receiver<bool>) -> StoreKeys {
        self.imported = imported;
        self
    }

    /// The store the keys live in.
    pub fn store(&self) -> &Arc<dyn ResourceStore> {
        &self.store
    }

    /// Ids of the family's keys, oldest first; the last one signs.
    pub async fn key_ids(&self, family: &KeyFamily) -> Result<Vec<String>, AuthError> {
        Ok(family
            .load(self.store.as_ref())
            .await?
            .key_ids()
            .iter()
            .map(u64::to_string)
            .collect())
    }

    /// Signs a token for `subject` with the family's newest key, making or awaiting the first key
    /// if there is none yet. The caller validates the subject's shape.
    pub async fn issue(
        &self,
        family: &KeyFamily,
        subject: &str,
        valid_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<(String, ZoneClaims), AuthError> {
        let keys = self.keys_to_sign_with(family).await?;
        keys.sign(subject, valid_for, now)
    }

    /// Verifies `token` for `subject` at `now` with the family's keys (then with the legacy keys,
    /// when the store's do not verify it).
    pub async fn verify(
        &self,
        family: &KeyFamily,
        token: &str,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<ZoneClaims, AuthError> {
        let keys = family.load(self.store.as_ref()).await?;
        let refusal = match keys.verify(token, subject, now) {
            Err(e @ (AuthError::UnknownKey { .. } | AuthError::BadSignature)) => e,
            other => return other,
        };
        let Some(legacy) = &self.legacy else {
            return Err(refusal);
        };
        let claims = match legacy.verify(token, subject, now) {
            Ok(claims) => claims,
            Err(AuthError::UnknownKey { .. } | AuthError::BadSignature) => return Err(refusal),
            Err(e) => return Err(e),
        };
        // Revocations recorded in the store hold for legacy tokens too.
        if keys.revoked().contains(&claims.jti) {
            return Err(AuthError::Revoked { jti: claims.jti });
        }
        Ok(claims)
    }

    /// Makes the family's first key if it has none (`Owned` only); returns the signing key's id.
    pub async fn ensure_key(&self, family: &KeyFamily) -> Result<String, AuthError> {
        let keys = self.keys_to_sign_with(family).await?;
        Ok(keys
            .key_ids()
            .last()
            .copied()
            .unwrap_or_default()
            .to_string())
    }

    /// Adds a key; new tokens are signed with it, older keys keep verifying until retired.
    pub async fn rotate(&self, family: &KeyFamily) -> Result<String, AuthError> {
        self.owned_and_imported(family).await?;
        loop {
            let keys = family.load(self.store.as_ref()).await?;
            let next = keys.key_ids().last().map_or(1, |n| n + 1);
            match self.create_key(family, next).await {
                Ok(()) => return Ok(next.to_string()),
                // Another node rotated at the same time: take the next serial.
                Err(AuthError::Store(StoreError::AlreadyExists(_))) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes key `kid`: tokens it signed stop verifying. Refuses to remove the last key.
    pub async fn retire(&self, family: &KeyFamily, kid: &str) -> Result<(), AuthError> {
        let keys = family.load(self.store.as_ref()).await?;
        let serial = kid
            .parse::<u64>()
            .ok()
            .filter(|n| keys.key_ids().contains(n))
            .ok_or_else(|| AuthError::UnknownKey {
                kid: kid.chars().take(64).collect(),
            })?;
        if keys.key_ids().len() == 1 {
            return Err(AuthError::LastKey {
                kid: kid.to_owned(),
            });
        }
        match self
            .store
            .delete(&family.key_of(&family.key_name(serial)), None)
            .await
        {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(AuthError::Store(e)),
        }
    }

    /// Revokes a token id in the family's revocation list (durable once this returns, and on
    /// every node of a replicated store). Revoking an id twice is harmless.
    pub async fn revoke(&self, family: &KeyFamily, token_id: &str) -> Result<(), AuthError> {
        if !crate::auth::is_valid_token_id(token_id) {
            return Err(AuthError::InvalidTokenId(
                token_id.chars().take(64).collect(),
            ));
        }
        let key = family.key_of(&family.revocations);
        loop {
            let current = self.store.get(&key).await.map_err(AuthError::Store)?;
            let mut ids = current.as_ref().map(revocation_ids).unwrap_or_default();
            if ids.iter().any(|id| id == token_id) {
                return Ok(());
            }
            ids.push(token_id.to_owned());
            let mut list = family.secret(&family.revocations, ids.join(",").as_bytes());
            let written = match current {
                Some(current) => {
                    list.meta.version = current.meta.version;
                    list.meta.labels = current.meta.labels;
                    self.store.update(list).await
                }
                None => self.store.create(list).await,
            };
            match written {
                Ok(_) => return Ok(()),
                // A concurrent revocation: read again and add ours.
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(AuthError::Store(e)),
            }
        }
    }

    /// Whether `token_id` is in the family's revocation list.
    pub async fn is_revoked(&self, family: &KeyFamily, token_id: &str) -> Result<bool, AuthError> {
        Ok(family
            .load(self.store.as_ref())
            .await?
            .revoked()
            .iter()
            .any(|id| id == token_id))
    }

    /// Copies keys and revocations from an old key directory into the family: each key `N`
    /// becomes key `N` (so tokens it signed keep their `kid`), unless the store already holds a
    /// key `N`, which wins (another node imported first, or the keys differ and the store's are
    /// the ones in use). Returns the ids imported and the ids left out because they differ.
    pub async fn import(
        &self,
        family: &KeyFamily,
        old: &KeySet,
    ) -> Result<(Vec<u64>, Vec<u64>), AuthError> {
        let (mut imported, mut clashing) = (Vec::new(), Vec::new());
        for serial in old.key_ids() {
            let secret = old.secret(serial).unwrap_or_default();
            let resource = family.secret(&family.key_name(serial), secret);
            match self.store.create(resource).await {
                Ok(_) => imported.push(serial),
                Err(StoreError::AlreadyExists(key)) => {
                    let held = self.store.get(&key).await.map_err(AuthError::Store)?;
                    if held.as_ref().and_then(secret_bytes).as_deref() != Some(secret) {
                        clashing.push(serial);
                    }
                }
                Err(e) => return Err(AuthError::Store(e)),
            }
        }
        for id in old.revoked() {
            self.revoke(family, &id).await?;
        }
        Ok((imported, clashing))
    }

    async fn keys_to_sign_with(&self, family: &KeyFamily) -> Result<KeySet, AuthError> {
        let keys = family.load(self.store.as_ref()).await?;
        if !keys.is_empty() {
            return Ok(keys);
        }
        match self.ownership {
            KeyOwnership::Owned => {
                self.owned_and_imported(family).await?;
                match self.create_key(family, 1).await {
                    Ok(()) | Err(AuthError::Store(StoreError::AlreadyExists(_))) => {}
                    Err(e) => return Err(e),
                }
                family.load(self.store.as_ref()).await
            }
            KeyOwnership::Synced => self.wait_for_synced_key(family).await,
        }
    }

    async fn owned_and_imported(&self, family: &KeyFamily) -> Result<(), AuthError> {
        if self.ownership != KeyOwnership::Owned {
            return Err(AuthError::NotOwner {
                family: family.describe(),
            });
        }
        let mut imported = self.imported.clone();
        let done = tokio::time::timeout(KEY_WAIT, imported.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok());
        match done {
            true => Ok(()),
            false => Err(AuthError::NoKeyYet {
                family: family.describe(),
                why: "the import of the old key directory has not finished",
            }),
        }
    }

    /// Waits (following the store's watch, bounded) for a key of the family to be synced.
    async fn wait_for_synced_key(&self, family: &KeyFamily) -> Result<KeySet, AuthError> {
        let deadline = tokio::time::Instant::now() + KEY_WAIT;
        loop {
            let from = self.store.revision();
            let keys = family.load(self.store.as_ref()).await?;
            if !keys.is_empty() {
                return Ok(keys);
            }
            let mut watch = self.store.watch(from).map_err(AuthError::Store)?;
            loop {
                match tokio::time::timeout_at(deadline, watch.next()).await {
                    Err(_) => {
                        return Err(AuthError::NoKeyYet {
                            family: family.describe(),
                            why: "it has not been synced from the global control plane yet",
                        })
                    }
                    Ok(None | Some(Err(_))) => break,
                    Ok(Some(Ok(event))) if event.resource.resource_type() == family.rtype() => {
                        break
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    }

    async fn create_key(&self, family: &KeyFamily, serial: u64) -> Result<(), AuthError> {
        let resource = family.secret(&family.key_name(serial), &KeySet::random_secret());
        self.store
            .create(resource)
            .await
            .map(|_| ())
            .map_err(AuthError::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_store::SledStore;

    const DAY: Duration = Duration::from_secs(86_400);

    fn store() -> (tempfile::TempDir, Arc<dyn ResourceStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path().join("store")).unwrap();
        (dir, Arc::new(store))
    }

    #[tokio::test]
    async fn keys_are_made_on_first_use_and_rotate_retire_revoke_in_the_store() {
        let (_dir, store) = store();
        let keys = StoreKeys::new(store.clone(), KeyOwnership::Owned);
        let zone = KeyFamily::zone_tokens();
        let now = Utc::now();
        let (old, old_claims) = keys.issue(&zone, "east", DAY, now).await.unwrap();
        assert_eq!(old_claims.kid, "1");
        let stored = store
            .get(&ResourceKey::new(
                ResourceType::GlobalSecret,
                None,
                "zone-token-signing-key-1",
            ))
            .await
            .unwrap()
            .unwrap();
        assert!(is_global_only(&stored));

        // Another view of the same store (another node) verifies it.
        let other = StoreKeys::new(store.clone(), KeyOwnership::Synced);
        assert!(other.verify(&zone, &old, "east", now).await.is_ok());

        assert_eq!(keys.rotate(&zone).await.unwrap(), "2");
        let (new, new_claims) = keys.issue(&zone, "east", DAY, now).await.unwrap();
        assert_eq!(new_claims.kid, "2");
        assert!(other.verify(&zone, &old, "east", now).await.is_ok());
        keys.retire(&zone, "1").await.unwrap();
        assert!(matches!(
            other.verify(&zone, &old, "east", now).await,
            Err(AuthError::UnknownKey { .. })
        ));
        assert!(matches!(
            keys.retire(&zone, "2").await,
            Err(AuthError::LastKey { .. })
        ));

        keys.revoke(&zone, &new_claims.jti).await.unwrap();
        keys.revoke(&zone, &new_claims.jti).await.unwrap();
        assert!(matches!(
            other.verify(&zone, &new, "east", now).await,
            Err(AuthError::Revoked { .. })
        ));
        assert!(other.is_revoked(&zone, &new_claims.jti).await.unwrap());
        assert!(matches!(
            keys.revoke(&zone, "bad\nid").await,
            Err(AuthError::InvalidTokenId(_))
        ));
        // A synced view never makes keys.
        assert!(matches!(
            other.rotate(&zone).await,
            Err(AuthError::NotOwner { .. })
        ));
    }

    #[tokio::test]
    async fn families_do_not_verify_each_other() {
        let (_dir, store) = store();
        let keys = StoreKeys::new(store, KeyOwnership::Owned);
        let now = Utc::now();
        let (a, b) = (
            KeyFamily::dataplane_tokens("a"),
            KeyFamily::dataplane_tokens("b"),
        );
        let (token, _) = keys.issue(&a, "a/web", DAY, now).await.unwrap();
        keys.ensure_key(&b).await.unwrap();
        assert!(keys.verify(&a, &token, "a/web", now).await.is_ok());
        assert!(keys.verify(&b, &token, "a/web", now).await.is_err());
        assert!(keys
            .verify(&KeyFamily::zone_proxy_tokens(), &token, "a/web", now)
            .await
            .is_err());
        assert!(keys
            .verify(&KeyFamily::zone_tokens(), &token, "a/web", now)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_synced_view_waits_for_the_key_then_signs() {
        let (_dir, store) = store();
        let zone_side = StoreKeys::new(store.clone(), KeyOwnership::Synced);
        let family = KeyFamily::dataplane_tokens("default");
        let waiting = {
            let zone_side = zone_side.clone();
            let family = family.clone();
            tokio::spawn(async move {
                zone_side
                    .issue(&family, "default/web", DAY, Utc::now())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let owner = StoreKeys::new(store, KeyOwnership::Owned);
        owner.ensure_key(&family).await.unwrap();
        let (token, _) = waiting.await.unwrap().unwrap();
        assert!(owner
            .verify(&family, &token, "default/web", Utc::now())
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn an_old_key_directory_is_imported_keeping_key_ids() {
        let dir = tempfile::tempdir().unwrap();
        let old = crate::auth::ZoneTokenIssuer::open(dir.path().join("keys")).unwrap();
        old.rotate().unwrap();
        let now = Utc::now();
        let (token, claims) = old.issue_at("east", DAY, now).unwrap();
        let (revoked, revoked_claims) = old.issue_at("east", DAY, now).unwrap();
        old.revoke(&revoked_claims.jti).unwrap();
        let set = crate::auth::load_key_dir(&dir.path().join("keys"))
            .unwrap()
            .unwrap();

        let (_store_dir, store) = store();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let keys = StoreKeys::new(store.clone(), KeyOwnership::Owned).after_import(rx);
        let zone = KeyFamily::zone_tokens();
        let imported = keys.import(&zone, &set).await.unwrap();
        assert_eq!(imported, (vec![1, 2], vec![]));
        tx.send_replace(true);
        assert_eq!(
            keys.verify(&zone, &token, "east", now).await.unwrap(),
            claims
        );
        assert!(matches!(
            keys.verify(&zone, &revoked, "east", now).await,
            Err(AuthError::Revoked { .. })
        ));
        // Importing again (another node with the same copy) changes nothing.
        assert_eq!(keys.import(&zone, &set).await.unwrap(), (vec![], vec![]));
        // A different directory's key 1 is not imported over the held one.
        let other_dir = tempfile::tempdir().unwrap();
        crate::auth::ZoneTokenIssuer::open(other_dir.path()).unwrap();
        let other = crate::auth::load_key_dir(other_dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(keys.import(&zone, &other).await.unwrap(), (vec![], vec![1]));
        assert_eq!(keys.rotate(&zone).await.unwrap(), "3");
    }

    #[tokio::test]
    async fn legacy_keys_verify_but_never_sign() {
        let dir = tempfile::tempdir().unwrap();
        let old = crate::auth::ZoneTokenIssuer::open(dir.path()).unwrap();
        let now = Utc::now();
        let (legacy_token, claims) = old.issue_subject_at("default/web", DAY, now).unwrap();
        let legacy = crate::auth::load_key_dir(dir.path()).unwrap();

        let (_store_dir, store) = store();
        let family = KeyFamily::dataplane_tokens("default");
        let keys = StoreKeys::new(store, KeyOwnership::Owned).with_legacy(legacy);
        // Key 1 of the store differs from legacy key 1: both kinds verify.
        let (token, _) = keys.issue(&family, "default/web", DAY, now).await.unwrap();
        assert!(keys
            .verify(&family, &token, "default/web", now)
            .await
            .is_ok());
        assert_eq!(
            keys.verify(&family, &legacy_token, "default/web", now)
                .await
                .unwrap(),
            claims
        );
        assert!(matches!(
            keys.verify(&family, &legacy_token, "default/other", now)
                .await,
            Err(AuthError::ZoneMismatch { .. })
        ));
        keys.revoke(&family, &claims.jti).await.unwrap();
        assert!(matches!(
            keys.verify(&family, &legacy_token, "default/web", now)
                .await,
            Err(AuthError::Revoked { .. })
        ));
    }
}
