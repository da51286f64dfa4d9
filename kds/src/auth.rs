//! Zone identity: tokens the global signs for each zone, and their verification when a zone opens
//! a KDS stream. A token is `base64url(claims) "." base64url(HMAC-SHA256(key, claims part))` where
//! the claims are JSON `{zone, iat, exp, jti, kid}`: `kid` names the signing key, `jti` the token
//! (for revocation). [`KeySet`] signs with its newest key and verifies with every key it holds,
//! so keys rotate without dropping connected zones. The keys live in the store
//! ([`crate::token_keys`], Secrets replicated with the rest of the global's state);
//! [`TokenAuthenticator`] checks KDS streams against them. Tokens are secrets: nothing here logs
//! or echoes one, errors say only why a token was refused.
//! [`ZoneTokenIssuer`] is the older home of the keys, a directory (one `<kid>.key` file per key,
//! mode 0600, revoked ids appended to `<dir>/revoked`): [`load_key_dir`] reads one so its keys
//! can be imported into the store, and it still serves tests and tools that want keys on disk.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeZone as _, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_LEN: usize = 4096;
/// Bytes of secret in each signing key.
const KEY_LEN: usize = 32;
/// Name of the append-only list of revoked token ids inside the key directory.
const REVOKED_FILE: &str = "revoked";
/// Suffix of signing-key files inside the key directory.
const KEY_SUFFIX: &str = ".key";
/// Longest validity [`parse_validity`] accepts (ten years).
const MAX_VALIDITY: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Why a token was not issued, or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no zone token: send metadata `authorization: Bearer <token>`")]
    Missing,
    /// The token is not of the form `claims.signature`, or its claims do not decode.
    #[error("malformed zone token: {0}")]
    Malformed(&'static str),
    /// The signature does not match the claims.
    #[error("zone token signature is invalid")]
    BadSignature,
    /// The token names a signing key the global does not have (never existed or retired).
    #[error("zone token signed with unknown or retired key {kid:?}")]
    UnknownKey { kid: String },
    /// The token expired.
    #[error("zone token expired at {at}")]
    Expired { at: DateTime<Utc> },
    /// The token was revoked.
    #[error("zone token {jti} has been revoked")]
    Revoked { jti: String },
    /// The token belongs to another zone than the one the stream claims.
    #[error("zone token was issued for zone {token_zone:?}, not for zone {claimed:?}")]
    ZoneMismatch { token_zone: String, claimed: String },
    /// A zone name is not an RFC 1123 label.
    #[error(
        "invalid zone name {0:?}: must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
    )]
    InvalidZone(String),
    /// A validity is not a positive duration such as `24h`, `30m` or `7d`.
    #[error("invalid validity {0:?}: expected a positive duration such as 30m, 24h or 7d (at most 10 years)")]
    InvalidValidity(String),
    /// A token id given to revoke is not one this issuer could have produced.
    #[error("invalid token id {0:?}")]
    InvalidTokenId(String),
    /// Retiring this key would leave no key to sign with.
    #[error("cannot retire key {kid:?}: it is the only signing key (rotate first)")]
    LastKey { kid: String },
    /// Reading or writing the signing keys in the store failed.
    #[error("token signing keys in the store: {0}")]
    Store(#[source] mesh_store::StoreError),
    /// A signing-key resource does not hold a key (its data is not 32 bytes of base64).
    #[error("{key} is not a token signing key: its data must be 32 bytes, base64-encoded")]
    BadKeyResource { key: String },
    /// This side does not own the keys (a zone: they come from the global).
    #[error("{family} are owned by the global control plane: rotate or retire them there")]
    NotOwner { family: String },
    /// No key to sign with yet.
    #[error("no token signing key yet ({family}): {why}; try again shortly")]
    NoKeyYet { family: String, why: &'static str },
    /// Reading or writing the key directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl AuthError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        AuthError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        match &err {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::BadSignature
            | AuthError::UnknownKey { .. }
            | AuthError::Expired { .. }
            | AuthError::Revoked { .. } => tonic::Status::unauthenticated(err.to_string()),
            AuthError::ZoneMismatch { .. } => tonic::Status::permission_denied(err.to_string()),
            AuthError::InvalidZone(_) => tonic::Status::invalid_argument(err.to_string()),
            AuthError::InvalidValidity(_)
            | AuthError::InvalidTokenId(_)
            | AuthError::LastKey { .. } => tonic::Status::invalid_argument(err.to_string()),
            AuthError::NoKeyYet { .. } | AuthError::NotOwner { .. } => {
                tonic::Status::unavailable(err.to_string())
            }
            // Do not leak server paths or store details to the peer.
            AuthError::Io { .. } | AuthError::Store(_) | AuthError::BadKeyResource { .. } => {
                tonic::Status::internal("zone token verification failed")
            }
        }
    }
}

/// What a valid token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneClaims {
    /// The zone the token is bound to.
    pub zone: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds (the token is refused from this instant on).
    pub exp: i64,
    /// Token id, used to revoke it.
    pub jti: String,
    /// Id of the signing key.
    pub kid: String,
}

impl ZoneClaims {
    /// When the token was issued.
    pub fn issued_at(&self) -> DateTime<Utc> {
        unix_to_datetime(self.iat)
    }

    /// When the token expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        unix_to_datetime(self.exp)
    }
}

fn unix_to_datetime(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whether `name` is an RFC 1123 label in lower case: 1 to 63 characters among `a-z`, `0-9` and
/// `-`, starting and ending with a letter or digit. Zone names appear in DNS and SNI names.
pub fn is_valid_zone_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn validate_zone(name: &str) -> Result<(), AuthError> {
    if is_valid_zone_name(name) {
        Ok(())
    } else {
        Err(AuthError::InvalidZone(name.to_string()))
    }
}

/// Parses a validity such as `24h`, `30m`, `7d`, `90s` or a sum like `1h30m`. Units: `s`, `m`,
/// `h`, `d`. The result must be positive and at most ten years.
pub fn parse_validity(text: &str) -> Result<Duration, AuthError> {
    let invalid = || AuthError::InvalidValidity(text.to_string());
    let s = text.trim();
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 12 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        let unit = rest[digits..].chars().next().ok_or_else(invalid)?;
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(invalid()),
        };
        total = value
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(invalid)?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    let validity = Duration::from_secs(total);
    if validity.is_zero() || validity > MAX_VALIDITY {
        return Err(invalid());
    }
    Ok(validity)
}

/// Extracts the bearer token from gRPC metadata (`authorization: Bearer <token>`).
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization metadata is not ASCII"))?
        .trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed(
        "authorization metadata is not `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "authorization metadata is not `Bearer <token>`",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// Decodes a token's claims without checking its signature, expiry or revocation: for display
/// only (for example to show an operator which zone and expiry a token carries).
pub fn decode_unverified(token: &str) -> Result<ZoneClaims, AuthError> {
    let (claims, _) = split_token(token)?;
    decode_claims(claims)
}

fn split_token(token: &str) -> Result<(&str, &str), AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("token too long"));
    }
    let (claims, signature) = token
        .split_once('.')
        .ok_or(AuthError::Malformed("expected `claims.signature`"))?;
    if claims.is_empty() || signature.is_empty() || signature.contains('.') {
        return Err(AuthError::Malformed("expected `claims.signature`"));
    }
    Ok((claims, signature))
}

fn decode_claims(claims_part: &str) -> Result<ZoneClaims, AuthError> {
    let json = URL_SAFE_NO_PAD
        .decode(claims_part)
        .map_err(|_| AuthError::Malformed("claims are not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| AuthError::Malformed("claims are not valid JSON"))
}

pub(crate) fn is_valid_token_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One signing key.
#[derive(Clone)]
struct SigningKey {
    secret: [u8; KEY_LEN],
}

impl SigningKey {
    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.secret).expect("HMAC accepts any key length")
    }

    fn random() -> SigningKey {
        let mut secret = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        SigningKey { secret }
    }
}

/// A set of signing keys by numeric id (the newest signs, every one verifies) and the revoked
/// token ids: what tokens are issued and verified with, wherever the keys are kept (a key
/// directory here, the store in [`crate::token_keys`]). Never prints key material.
#[derive(Default, Clone)]
pub struct KeySet {
    keys: BTreeMap<u64, SigningKey>,
    revoked: HashSet<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

impl KeySet {
    fn newest(&self) -> Option<(u64, &SigningKey)> {
        self.keys.iter().next_back().map(|(id, key)| (*id, key))
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids, oldest first.
    pub fn key_ids(&self) -> Vec<u64> {
        self.keys.keys().copied().collect()
    }

    /// The secret of key `id` (to store it elsewhere, e.g. when importing a key directory).
    pub fn secret(&self, id: u64) -> Option<&[u8]> {
        self.keys.get(&id).map(|k| k.secret.as_slice())
    }

    /// Adds key `id` with `secret` (exactly 32 bytes, else `false`).
    pub fn insert_key(&mut self, id: u64, secret: &[u8]) -> bool {
        let Ok(secret) = <[u8; KEY_LEN]>::try_from(secret) else {
            return false;
        };
        self.keys.insert(id, SigningKey { secret });
        true
    }

    /// Marks a token id as revoked.
    pub fn insert_revoked(&mut self, token_id: &str) {
        self.revoked.insert(token_id.to_string());
    }

    /// The revoked token ids, sorted.
    pub fn revoked(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.revoked.iter().cloned().collect();
        ids.sort();
        ids
    }

    /// A fresh random secret of the right length for a new key.
    pub fn random_secret() -> Vec<u8> {
        SigningKey::random().secret.to_vec()
    }

    /// Signs a token for `subject` (the `zone` claim) valid from `now` for `valid_for` with the
    /// newest key. The caller validates the subject's shape.
    pub fn sign(
        &self,
        subject: &str,
        valid_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<(String, ZoneClaims), AuthError> {
        if subject.is_empty() || subject.len() > 512 {
            return Err(AuthError::Malformed("subject must be 1-512 characters"));
        }
        if valid_for.is_zero() || valid_for > MAX_VALIDITY {
            return Err(AuthError::InvalidValidity(format!(
                "{}s",
                valid_for.as_secs()
            )));
        }
        let iat = now.timestamp();
        // valid_for is at most ten years, so this cannot overflow.
        let exp = iat.saturating_add(valid_for.as_secs() as i64);
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let (kid, key) = self
            .newest()
            .ok_or(AuthError::UnknownKey { kid: String::new() })?;
        let claims = ZoneClaims {
            zone: subject.to_string(),
            iat,
            exp,
            jti: hex::encode(jti),
            kid: kid.to_string(),
        };
        let json = serde_json::to_vec(&claims).map_err(|_| AuthError::Malformed("claims"))?;
        let claims_part = URL_SAFE_NO_PAD.encode(json);
        let mut mac = key.mac();
        mac.update(claims_part.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Ok((format!("{claims_part}.{signature}"), claims))
    }

    /// Verifies `token` for `subject` at `now`: signature by a key of this set (constant-time
    /// comparison), not revoked, not expired, bound to that subject (`ZoneMismatch` otherwise).
    pub fn verify(
        &self,
        token: &str,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<ZoneClaims, AuthError> {
        let (claims_part, signature_part) = split_token(token)?;
        let claims = decode_claims(claims_part)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_part)
            .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let key = claims
            .kid
            .parse::<u64>()
            .ok()
            .filter(|id| id.to_string() == claims.kid)
            .and_then(|id| self.keys.get(&id))
            .ok_or_else(|| AuthError::UnknownKey {
                kid: sanitize(&claims.kid),
            })?;
        let mut mac = key.mac();
        mac.update(claims_part.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        if self.revoked.contains(&claims.jti) {
            return Err(AuthError::Revoked {
                jti: claims.jti.clone(),
            });
        }
        // Signed by us from here on; the checks below cannot be forged.
        if now.timestamp() >= claims.exp {
            return Err(AuthError::Expired {
                at: claims.expires_at(),
            });
        }
        if claims.zone != subject {
            return Err(AuthError::ZoneMismatch {
                token_zone: claims.zone.clone(),
                claimed: sanitize(subject),
            });
        }
        Ok(claims)
    }
}

/// Reads a key directory written by [`ZoneTokenIssuer`] without changing it: `None` when the
/// directory does not exist (nothing to import).
pub fn load_key_dir(dir: &Path) -> Result<Option<KeySet>, AuthError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    load_state(dir).map(Some)
}

/// Issues and verifies zone tokens with a set of signing keys persisted in one directory.
///
/// Cheap to share behind an `Arc`: every method takes `&self`. Verification takes a read lock
/// on an in-memory key set; issuing, rotating, retiring and revoking write to disk first and then
/// update memory, so a crash never leaves a token verifiable that the disk does not back.
pub struct ZoneTokenIssuer {
    dir: PathBuf,
    state: RwLock<KeySet>,
}

impl std::fmt::Debug for ZoneTokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ZoneTokenIssuer")
            .field("dir", &self.dir)
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl ZoneTokenIssuer {
    /// Opens the key directory, creating it (mode 0700) and a first signing key if it holds none.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, AuthError> {
        let dir = dir.as_ref().to_path_buf();
        create_private_dir(&dir)?;
        let mut state = load_state(&dir)?;
        if state.keys.is_empty() {
            let key = write_new_key(&dir, 1)?;
            state.keys.insert(1, key);
        }
        Ok(ZoneTokenIssuer {
            dir,
            state: RwLock::new(state),
        })
    }

    /// The directory holding the keys and the revocation list.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads keys and revocations from disk (for changes made by another process).
    pub fn reload(&self) -> Result<(), AuthError> {
        let state = load_state(&self.dir)?;
        if state.keys.is_empty() {
            return Err(AuthError::io(
                "reload signing keys from",
                &self.dir,
                io::Error::new(io::ErrorKind::NotFound, "no signing key left"),
            ));
        }
        *self.write_state() = state;
        Ok(())
    }

    /// Ids of the signing keys that verify tokens, oldest first; the last one signs.
    pub fn key_ids(&self) -> Vec<String> {
        self.read_state()
            .keys
            .keys()
            .map(|id| id.to_string())
            .collect()
    }

    /// Id of the key new tokens are signed with.
    pub fn signing_key_id(&self) -> String {
        self.read_state()
            .newest()
            .map(|(id, _)| id.to_string())
            .unwrap_or_default()
    }

    /// Issues a token for `zone`, valid for `valid_for` from now, signed with the newest key.
    pub fn issue(&self, zone: &str, valid_for: Duration) -> Result<String, AuthError> {
        self.issue_at(zone, valid_for, Utc::now())
            .map(|(token, _)| token)
    }

    /// Like [`issue`](Self::issue) with an explicit issue time; also returns the claims (for
    /// example to report the token id and expiry to the operator).
    pub fn issue_at(
        &self,
        zone: &str,
        valid_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<(String, ZoneClaims), AuthError> {
        validate_zone(zone)?;
        self.issue_subject_at(zone, valid_for, now)
    }

    /// Issues a token bound to an arbitrary `subject` (the `zone` claim carries it): the same
    /// signing machinery serves other identities, such as dataplane tokens (`<mesh>/<name>`),
    /// each kind with its own key directory so one kind's token never verifies as another's.
    /// The caller validates the subject's shape.
    pub fn issue_subject_at(
        &self,
        subject: &str,
        valid_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<(String, ZoneClaims), AuthError> {
        self.read_state().sign(subject, valid_for, now)
    }

    /// Verifies `token` for a stream claiming to be `claimed_zone` at time `now`: signature by a
    /// key still held (constant-time comparison), not revoked, not expired, bound to that zone.
    pub fn verify(
        &self,
        token: &str,
        claimed_zone: &str,
        now: DateTime<Utc>,
    ) -> Result<ZoneClaims, AuthError> {
        self.verify_subject(token, claimed_zone, now)
    }

    /// Verifies `token` for `subject` (see [`issue_subject_at`](Self::issue_subject_at)): the
    /// checks of [`verify`](Self::verify), with `ZoneMismatch` meaning the subject differs.
    pub fn verify_subject(
        &self,
        token: &str,
        claimed_zone: &str,
        now: DateTime<Utc>,
    ) -> Result<ZoneClaims, AuthError> {
        self.read_state().verify(token, claimed_zone, now)
    }

    /// Adds a new signing key; new tokens are signed with it, tokens signed with older keys keep
    /// verifying until those keys are retired. Returns the new key's id.
    pub fn rotate(&self) -> Result<String, AuthError> {
        let mut state = self.write_state();
        let next = state.newest().map(|(id, _)| id + 1).unwrap_or(1);
        let key = write_new_key(&self.dir, next)?;
        state.keys.insert(next, key);
        Ok(next.to_string())
    }

    /// Removes a signing key: tokens it signed stop verifying (streams already authenticated are
    /// not affected). Refuses to remove the last key.
    pub fn retire(&self, key_id: &str) -> Result<(), AuthError> {
        let mut state = self.write_state();
        let id = key_id
            .parse::<u64>()
            .ok()
            .filter(|id| state.keys.contains_key(id))
            .ok_or_else(|| AuthError::UnknownKey {
                kid: sanitize(key_id),
            })?;
        if state.keys.len() == 1 {
            return Err(AuthError::LastKey {
                kid: key_id.to_string(),
            });
        }
        let path = key_path(&self.dir, id);
        fs::remove_file(&path).map_err(|e| AuthError::io("remove signing key", &path, e))?;
        sync_dir(&self.dir)?;
        state.keys.remove(&id);
        Ok(())
    }

    /// Revokes a token by id (its `jti`), durably: the id is appended to `<dir>/revoked` and
    /// fsync'd before this returns. Revoking an id twice is harmless.
    pub fn revoke(&self, token_id: &str) -> Result<(), AuthError> {
        if !is_valid_token_id(token_id) {
            return Err(AuthError::InvalidTokenId(sanitize(token_id)));
        }
        let mut state = self.write_state();
        if state.revoked.contains(token_id) {
            return Ok(());
        }
        let path = self.dir.join(REVOKED_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(&path)
            .map_err(|e| AuthError::io("open revocation list", &path, e))?;
        file.write_all(format!("{token_id}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| AuthError::io("append to revocation list", &path, e))?;
        sync_dir(&self.dir)?;
        state.revoked.insert(token_id.to_string());
        Ok(())
    }

    /// Whether a token id has been revoked.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.read_state().revoked.contains(token_id)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        // A panic while holding the lock cannot leave the set half-updated (disk first, then one
        // insert or remove), so a poisoned lock is still consistent.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, KeySet> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps peer-supplied strings short and printable in error messages.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

fn key_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}{KEY_SUFFIX}"))
}

fn create_private_dir(dir: &Path) -> Result<(), AuthError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| AuthError::io("create key directory", dir, e))
}

fn load_state(dir: &Path) -> Result<KeySet, AuthError> {
    let mut state = KeySet::default();
    let entries = fs::read_dir(dir).map_err(|e| AuthError::io("read key directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AuthError::io("read key directory", dir, e))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(KEY_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let text =
            fs::read_to_string(&path).map_err(|e| AuthError::io("read signing key", &path, e))?;
        let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == KEY_LEN);
        let Some(bytes) = bytes else {
            return Err(AuthError::io(
                "read signing key",
                &path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("expected {} hex digits", KEY_LEN * 2),
                ),
            ));
        };
        let mut secret = [0u8; KEY_LEN];
        secret.copy_from_slice(&bytes);
        state.keys.insert(id, SigningKey { secret });
    }
    let revoked_path = dir.join(REVOKED_FILE);
    match fs::read_to_string(&revoked_path) {
        Ok(text) => {
            // A torn last line (crash mid-append) is ignored: it was never acknowledged.
            state.revoked = text
                .lines()
                .map(str::trim)
                .filter(|l| is_valid_token_id(l))
                .map(str::to_string)
                .collect();
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(AuthError::io("read revocation list", &revoked_path, e)),
    }
    Ok(state)
}

/// Writes a fresh random key as `<id>.key` (mode 0600), atomically: temporary file, fsync,
/// rename, fsync of the directory.
fn write_new_key(dir: &Path, id: u64) -> Result<SigningKey, AuthError> {
    let mut secret = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let path = key_path(dir, id);
    let tmp = dir.join(format!(".{id}{KEY_SUFFIX}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_0600()
        .open(&tmp)
        .map_err(|e| AuthError::io("create signing key", &tmp, e))?;
    file.write_all(hex::encode(secret).as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| AuthError::io("write signing key", &tmp, e))?;
    drop(file);
    if path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(AuthError::io(
            "create signing key",
            &path,
            io::Error::new(io::ErrorKind::AlreadyExists, "key id already in use"),
        ));
    }
    fs::rename(&tmp, &path).map_err(|e| AuthError::io("install signing key", &path, e))?;
    sync_dir(dir)?;
    Ok(SigningKey { secret })
}

fn sync_dir(dir: &Path) -> Result<(), AuthError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| AuthError::io("sync key directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// `OpenOptions::mode(0o600)` on Unix, nothing elsewhere.
trait OpenOptionsExt0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsExt0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            self.mode(0o600);
        }
        self
    }
}

/// Authenticates KDS streams with zone tokens: reads `authorization: Bearer <token>` from the
/// stream's metadata and verifies it with the zone-token keys of the store
/// ([`crate::token_keys`]) for the zone the stream claims. Rotation, retirement and revocation,
/// through any node of the global, take effect for the next stream. Implements the KDS server's
/// [`crate::server::ZoneAuthenticator`] hook.
#[derive(Debug, Clone)]
pub struct TokenAuthenticator {
    keys: crate::token_keys::StoreKeys,
}

impl TokenAuthenticator {
    /// Verifies with the zone-token keys of `keys`' store.
    pub fn new(keys: crate::token_keys::StoreKeys) -> Self {
        TokenAuthenticator { keys }
    }

    /// The keys this authenticator verifies with.
    pub fn keys(&self) -> &crate::token_keys::StoreKeys {
        &self.keys
    }

    /// Verifies the stream's token for `claimed_zone` now, returning its claims, or the gRPC
    /// status to refuse the stream with (the message says why, never contains the token).
    pub async fn verify_metadata(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        claimed_zone: &str,
    ) -> Result<ZoneClaims, tonic::Status> {
        let family = crate::token_keys::KeyFamily::zone_tokens();
        let result = match bearer_token(metadata) {
            Ok(token) => {
                self.keys
                    .verify(&family, token, claimed_zone, Utc::now())
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(claims) => {
                tracing::debug!(zone = %claims.zone, jti = %claims.jti, kid = %claims.kid, "zone token accepted");
                Ok(claims)
            }
            Err(err) => {
                tracing::warn!(zone = %sanitize(claimed_zone), reason = %err, "KDS stream refused");
                Err(err.into())
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::server::ZoneAuthenticator for TokenAuthenticator {
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        claimed_zone: &str,
    ) -> Result<(), tonic::Status> {
        self.verify_metadata(metadata, claimed_zone)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn issuer() -> (tempfile::TempDir, ZoneTokenIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = ZoneTokenIssuer::open(dir.path().join("signing-keys")).unwrap();
        (dir, issuer)
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn round_trip() {
        let (_dir, issuer) = issuer();
        let now = Utc::now();
        let (token, claims) = issuer.issue_at("zone-1", DAY, now).unwrap();
        let verified = issuer.verify(&token, "zone-1", now).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.zone, "zone-1");
        assert_eq!(verified.exp - verified.iat, 86_400);
        assert_eq!(decode_unverified(&token).unwrap(), claims);
        let token = issuer.issue("zone-2", DAY).unwrap();
        assert!(issuer.verify(&token, "zone-2", Utc::now()).is_ok());
    }

    #[test]
    fn subjects_round_trip_and_keys_do_not_cross() {
        let (_dir, issuer) = issuer();
        let (_other_dir, other) = self::issuer();
        let now = Utc::now();
        let (token, _) = issuer.issue_subject_at("default/web-1", DAY, now).unwrap();
        assert!(issuer.verify_subject(&token, "default/web-1", now).is_ok());
        assert!(matches!(
            issuer.verify_subject(&token, "default/web-2", now),
            Err(AuthError::ZoneMismatch { .. })
        ));
        // Another key directory (another kind of token) does not verify it.
        assert!(other.verify_subject(&token, "default/web-1", now).is_err());
        assert!(issuer.issue_subject_at("", DAY, now).is_err());
    }

    #[test]
    fn expiry() {
        let (_dir, issuer) = issuer();
        let now = Utc::now();
        let (token, claims) = issuer
            .issue_at("east", Duration::from_secs(60), now)
            .unwrap();
        assert!(issuer
            .verify(&token, "east", now + chrono::Duration::seconds(59))
            .is_ok());
        let err = issuer
            .verify(&token, "east", now + chrono::Duration::seconds(60))
            .unwrap_err();
        assert!(matches!(err, AuthError::Expired { at } if at == claims.expires_at()));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"), "{}", status.message());
    }

    #[test]
    fn revocation_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let issuer = ZoneTokenIssuer::open(&keys).unwrap();
        let now = Utc::now();
        let (revoked, claims) = issuer.issue_at("east", DAY, now).unwrap();
        let (kept, _) = issuer.issue_at("east", DAY, now).unwrap();
        issuer.revoke(&claims.jti).unwrap();
        issuer.revoke(&claims.jti).unwrap();
        assert!(matches!(
            issuer.verify(&revoked, "east", now),
            Err(AuthError::Revoked { ref jti }) if *jti == claims.jti
        ));
        drop(issuer);
        let issuer = ZoneTokenIssuer::open(&keys).unwrap();
        assert!(issuer.is_revoked(&claims.jti));
        assert!(matches!(
            issuer.verify(&revoked, "east", now),
            Err(AuthError::Revoked { .. })
        ));
        assert!(issuer.verify(&kept, "east", now).is_ok());
        let text = fs::read_to_string(keys.join(REVOKED_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(matches!(
            issuer.revoke("bad\nid"),
            Err(AuthError::InvalidTokenId(_))
        ));
    }

    #[test]
    fn rotation_and_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let issuer = ZoneTokenIssuer::open(&keys).unwrap();
        let now = Utc::now();
        let old_kid = issuer.signing_key_id();
        let (old, old_claims) = issuer.issue_at("east", DAY, now).unwrap();
        assert_eq!(old_claims.kid, old_kid);

        let new_kid = issuer.rotate().unwrap();
        assert_ne!(new_kid, old_kid);
        assert_eq!(issuer.signing_key_id(), new_kid);
        assert!(issuer.verify(&old, "east", now).is_ok());
        let (new, new_claims) = issuer.issue_at("east", DAY, now).unwrap();
        assert_eq!(new_claims.kid, new_kid);

        // Survives a restart.
        drop(issuer);
        let issuer = ZoneTokenIssuer::open(&keys).unwrap();
        assert_eq!(issuer.key_ids(), vec![old_kid.clone(), new_kid.clone()]);
        assert!(issuer.verify(&old, "east", now).is_ok());

        issuer.retire(&old_kid).unwrap();
        assert!(matches!(
            issuer.verify(&old, "east", now),
            Err(AuthError::UnknownKey { ref kid }) if *kid == old_kid
        ));
        assert!(issuer.verify(&new, "east", now).is_ok());
        assert!(matches!(
            issuer.retire(&new_kid),
            Err(AuthError::LastKey { .. })
        ));
        assert!(matches!(
            issuer.retire(&old_kid),
            Err(AuthError::UnknownKey { .. })
        ));
        drop(issuer);
        let issuer = ZoneTokenIssuer::open(&keys).unwrap();
        assert_eq!(issuer.key_ids(), vec![new_kid]);
        assert!(issuer.verify(&old, "east", now).is_err());
    }

    #[test]
    fn zone_mismatch_is_permission_denied() {
        let (_dir, issuer) = issuer();
        let now = Utc::now();
        let (token, _) = issuer.issue_at("east", DAY, now).unwrap();
        let err = issuer.verify(&token, "west", now).unwrap_err();
        assert!(matches!(
            &err,
            AuthError::ZoneMismatch { token_zone, claimed } if token_zone == "east" && claimed == "west"
        ));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("east") && status.message().contains("west"));
        assert!(!status.message().contains(&token));
    }

    #[test]
    fn invalid_zone_names_are_refused() {
        let (_dir, issuer) = issuer();
        for bad in ["", "-a", "a-", "Zone", "a.b", "a_b", &"a".repeat(64)] {
            assert!(
                matches!(issuer.issue(bad, DAY), Err(AuthError::InvalidZone(_))),
                "{bad:?}"
            );
        }
        for good in ["a", "zone-1", "0", &"a".repeat(63)] {
            assert!(issuer.issue(good, DAY).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn tampering_is_detected() {
        let (_dir, issuer) = issuer();
        let now = Utc::now();
        let (token, claims) = issuer.issue_at("east", DAY, now).unwrap();
        let (_, signature) = token.split_once('.').unwrap();

        // Re-bound to another zone, and extended, with the original signature.
        for forged in [
            ZoneClaims {
                zone: "west".into(),
                ..claims.clone()
            },
            ZoneClaims {
                exp: claims.exp + 1_000_000,
                ..claims.clone()
            },
        ] {
            let part = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
            let forged = format!("{part}.{signature}");
            assert!(matches!(
                issuer.verify(&forged, &claims.zone, now),
                Err(AuthError::BadSignature)
            ));
        }

        // Signed by another issuer's key with the same kid.
        let (_other_dir, other) = self::issuer();
        let (foreign, _) = other.issue_at("east", DAY, now).unwrap();
        assert!(matches!(
            issuer.verify(&foreign, "east", now),
            Err(AuthError::BadSignature)
        ));

        // A kid that does not exist.
        let part = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&ZoneClaims {
                kid: "99".into(),
                ..claims.clone()
            })
            .unwrap(),
        );
        assert!(matches!(
            issuer.verify(&format!("{part}.{signature}"), "east", now),
            Err(AuthError::UnknownKey { .. })
        ));
    }

    #[test]
    fn malformed_tokens_never_panic_nor_verify() {
        let (_dir, issuer) = issuer();
        let now = Utc::now();
        let (token, _) = issuer.issue_at("east", DAY, now).unwrap();
        assert!(matches!(
            issuer.verify("", "east", now),
            Err(AuthError::Missing)
        ));
        for bad in ["x", ".", "a.", ".b", "a.b.c", "!!!.???", "e30.e30"] {
            let err = issuer.verify(bad, "east", now).unwrap_err();
            assert!(
                matches!(err, AuthError::Malformed(_) | AuthError::BadSignature),
                "{bad:?}: {err:?}"
            );
        }
        assert!(matches!(
            issuer.verify(&"a".repeat(MAX_TOKEN_LEN + 1), "east", now),
            Err(AuthError::Malformed(_))
        ));
        // Every truncation and every single-byte change is refused, without panicking.
        let bytes = token.as_bytes();
        for len in 0..bytes.len() {
            let truncated = String::from_utf8_lossy(&bytes[..len]);
            assert!(issuer.verify(&truncated, "east", now).is_err(), "len {len}");
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in 0..bytes.len() {
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let mut changed = bytes.to_vec();
                let b = (state & 0x7f) as u8;
                if changed[i] == b {
                    continue;
                }
                changed[i] = b;
                let changed = String::from_utf8_lossy(&changed);
                // Base64 padding bits: a change in the last character may decode to the same
                // bytes; anything else must fail.
                if let Ok(claims) = issuer.verify(&changed, "east", now) {
                    assert_eq!(decode_unverified(&token).unwrap(), claims);
                }
            }
        }
        // Random garbage.
        for n in 0..2000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 200) as usize;
            let garbage: String = (0..len)
                .map(|k| {
                    let x = state.rotate_left(k as u32 % 64) ^ n;
                    [b'a', b'.', b'-', b'_', b'Z', b'0', b'=', 0xc3][(x % 8) as usize] as char
                })
                .collect();
            assert!(issuer.verify(&garbage, "east", now).is_err());
        }
    }

    #[test]
    fn validity_parsing() {
        assert_eq!(parse_validity("24h").unwrap(), DAY);
        assert_eq!(parse_validity("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_validity("7d").unwrap(), 7 * DAY);
        assert_eq!(parse_validity("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_validity("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in [
            "",
            "0h",
            "24",
            "h",
            "-1h",
            "1w",
            "1.5h",
            "99999999999999d",
            "4000d",
            "24h ",
        ] {
            if bad == "24h " {
                // Surrounding whitespace is tolerated.
                assert!(parse_validity(bad).is_ok());
                continue;
            }
            assert!(
                matches!(parse_validity(bad), Err(AuthError::InvalidValidity(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let issuer = ZoneTokenIssuer::open(&keys).unwrap();
        issuer.rotate().unwrap();
        let (_, claims) = issuer.issue_at("east", DAY, Utc::now()).unwrap();
        issuer.revoke(&claims.jti).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&keys), 0o700);
            for entry in fs::read_dir(&keys).unwrap() {
                let path = entry.unwrap().path();
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
        assert!(!format!("{issuer:?}").contains(&fs::read_to_string(keys.join("1.key")).unwrap()));
    }

    #[tokio::test]
    async fn bearer_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = mesh_store::SledStore::open(dir.path().join("store")).unwrap();
        let keys = crate::token_keys::StoreKeys::new(
            Arc::new(store),
            crate::token_keys::KeyOwnership::Owned,
        );
        let family = crate::token_keys::KeyFamily::zone_tokens();
        let (token, _) = keys.issue(&family, "east", DAY, Utc::now()).await.unwrap();
        let auth = TokenAuthenticator::new(keys);
        let mut md = tonic::metadata::MetadataMap::new();
        let status = auth.verify_metadata(&md, "east").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("no zone token"));

        md.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(
            auth.verify_metadata(&md, "east").await.unwrap().zone,
            "east"
        );
        let status = auth.verify_metadata(&md, "west").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(!status.message().contains(&token));

        // Through the KDS server's hook.
        let hook: &dyn crate::server::ZoneAuthenticator = &auth;
        assert!(hook.authenticate(&md, "east").await.is_ok());
        assert_eq!(
            hook.authenticate(&md, "west").await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );

        md.insert("authorization", token.parse().unwrap());
        assert_eq!(
            auth.verify_metadata(&md, "east").await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(
            auth.verify_metadata(&md, "east").await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
