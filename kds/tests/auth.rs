//! Zone tokens end to end over gRPC: a server guarded by `TokenAuthenticator` (the claimed zone
//! sent as metadata, as the KDS server takes it from the stream) accepts a valid token and refuses
//! a missing, expired, revoked, retired-key or other-zone token with a status saying why; key
//! rotation does not disturb zones holding tokens signed with the previous key. The keys live in
//! the store (`token_keys`), so a restart on the same store keeps them and the revocations.

mod auth_tls_support;

use std::sync::Arc;
use std::time::Duration;

use auth_tls_support::{call_echo, serve_echo};
use chrono::Utc;
use kds::auth::{parse_validity, TokenAuthenticator};
use kds::token_keys::{KeyFamily, KeyOwnership, StoreKeys};
use mesh_store::SledStore;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_are_checked_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path().join("store")).unwrap());
    let issuer = StoreKeys::new(store.clone(), KeyOwnership::Owned);
    let zone = KeyFamily::zone_tokens();
    let auth = Arc::new(TokenAuthenticator::new(issuer.clone()));
    let (addr, shutdown) = serve_echo(None, Some(auth)).await;
    let ch = channel(addr).await;

    let (east, _) = issuer
        .issue(&zone, "east", parse_validity("24h").unwrap(), Utc::now())
        .await
        .unwrap();
    let bearer = format!("Bearer {east}");
    assert_eq!(
        call_echo(ch.clone(), "hi", Some((&bearer, "east")))
            .await
            .unwrap(),
        "hello east hi"
    );

    // No token.
    let status = call_echo(ch.clone(), "hi", None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("no zone token"), "{status:?}");

    // Another zone's token.
    let status = call_echo(ch.clone(), "hi", Some((&bearer, "west")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("east"), "{status:?}");
    assert!(!status.message().contains(&east));

    // Garbage.
    let status = call_echo(ch.clone(), "hi", Some(("Bearer abc.def", "east")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Expired (issued two days ago for one day).
    let (expired, _) = issuer
        .issue(
            &zone,
            "east",
            Duration::from_secs(86_400),
            Utc::now() - chrono::Duration::days(2),
        )
        .await
        .unwrap();
    let status = call_echo(
        ch.clone(),
        "hi",
        Some((&format!("Bearer {expired}"), "east")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{status:?}");

    // Rotation: the old token keeps working, new tokens use the new key.
    let old_kid = issuer.ensure_key(&zone).await.unwrap();
    let new_kid = issuer.rotate(&zone).await.unwrap();
    assert!(call_echo(ch.clone(), "hi", Some((&bearer, "east")))
        .await
        .is_ok());
    let (fresh, claims) = issuer
        .issue(&zone, "east", Duration::from_secs(3600), Utc::now())
        .await
        .unwrap();
    assert_eq!(claims.kid, new_kid);
    let fresh_bearer = format!("Bearer {fresh}");

    // Retiring the old key refuses tokens it signed, not the fresh one.
    issuer.retire(&zone, &old_kid).await.unwrap();
    let status = call_echo(ch.clone(), "hi", Some((&bearer, "east")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("retired"), "{status:?}");
    assert!(call_echo(ch.clone(), "hi", Some((&fresh_bearer, "east")))
        .await
        .is_ok());

    // Revocation, also after a restart of the global.
    issuer.revoke(&zone, &claims.jti).await.unwrap();
    let status = call_echo(ch.clone(), "hi", Some((&fresh_bearer, "east")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status:?}");
    let _ = shutdown.send(());

    // A new server over the same store (another node, or the global started again) holds the
    // same keys and revocations.
    let reopened = StoreKeys::new(store, KeyOwnership::Owned);
    let (addr, shutdown) = serve_echo(
        None,
        Some(Arc::new(TokenAuthenticator::new(reopened.clone()))),
    )
    .await;
    let ch = channel(addr).await;
    let status = call_echo(ch.clone(), "hi", Some((&fresh_bearer, "east")))
        .await
        .unwrap_err();
    assert!(status.message().contains("revoked"), "{status:?}");
    let (west, claims) = reopened
        .issue(&zone, "west", Duration::from_secs(60), Utc::now())
        .await
        .unwrap();
    assert_eq!(claims.kid, new_kid);
    assert!(
        call_echo(ch.clone(), "hi", Some((&format!("Bearer {west}"), "west")))
            .await
            .is_ok()
    );
    let _ = shutdown.send(());
}
