//! KDS with its production identity checks: TLS with the generated CA and server certificate,
//! and zone tokens checked by `auth::TokenAuthenticator`. A zone with a valid token for its name
//! syncs; a zone claiming another name with that token is refused and says why; a rotated token
//! file is read again at the next dial (the old token being revoked, only a re-read can succeed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kds::auth::{decode_unverified, TokenAuthenticator};
use kds::tls::{client_tls_config, KdsServerTls};
use kds::token_keys::{KeyFamily, KeyOwnership, StoreKeys};
use kds::{Backoff, KdsClientConfig, KdsServer, KdsTuning, TokenSource, ZoneStatusRegistry};
use mesh_api::{ResourceKey, ResourceType};
use mesh_store::{ResourceStore, SledStore};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

fn policy(name: &str) -> mesh_api::Resource {
    let yaml = format!(
        "type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: 5s\n"
    );
    mesh_api::parse_documents(&yaml)
        .remove(0)
        .expect("valid")
        .resource
}

fn tuning() -> KdsTuning {
    KdsTuning {
        heartbeat_interval: Duration::from_millis(200),
        watchdog_timeout: Duration::from_secs(1),
        ..KdsTuning::default()
    }
}

struct Global {
    status: ZoneStatusRegistry,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_global(
    store: Arc<SledStore>,
    tls: &KdsServerTls,
    issuer: StoreKeys,
    addr: SocketAddr,
) -> (Global, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    let status = ZoneStatusRegistry::new();
    let server = KdsServer::with_tuning(
        store,
        Arc::new(TokenAuthenticator::new(issuer)),
        tuning(),
        status.clone(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let tls = tls.server_tls_config();
    let task = tokio::spawn(async move {
        kds::serve(listener, Some(tls), server, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    (Global { status, stop, task }, addr)
}

impl Global {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("stops")
            .expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_and_zone_tokens_end_to_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = KdsServerTls::load_or_generate(&dir.path().join("tls"), &[])?;
    let ca = tls.ca_pem().expect("generated CA").as_bytes().to_vec();
    let store = Arc::new(SledStore::open(dir.path().join("global"))?);
    let issuer = StoreKeys::new(store.clone(), KeyOwnership::Owned);
    let zone_tokens = KeyFamily::zone_tokens();
    // Zone proxies' keys travel to the zones; zone-token keys never leave the global.
    issuer.ensure_key(&KeyFamily::zone_proxy_tokens()).await?;
    store.create(policy("p1")).await?;
    let (global, addr) =
        start_global(store.clone(), &tls, issuer.clone(), "127.0.0.1:0".parse()?).await;

    let token_file = dir.path().join("zone-1.token");
    let (first_token, _) = issuer
        .issue(
            &zone_tokens,
            "zone-1",
            Duration::from_secs(3600),
            chrono::Utc::now(),
        )
        .await?;
    std::fs::write(&token_file, format!("{first_token}\n"))?;
    let zone_store = Arc::new(SledStore::open(dir.path().join("zone-1"))?);
    let mut config = KdsClientConfig::new("zone-1", format!("https://{addr}"), zone_store.clone());
    config.tls = Some(client_tls_config(&ca, "localhost"));
    config.token = TokenSource::File(token_file.clone());
    config.tuning = tuning();
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
        multiplier: 2.0,
        jitter: 0.1,
    };
    let status = config.status.clone();
    let (stop_zone, zone_stopped) = oneshot::channel::<()>();
    let zone = tokio::spawn(kds::run(config, async {
        let _ = zone_stopped.await;
    }));
    let p1 = ResourceKey::new(ResourceType::MeshTimeout, Some("default"), "p1");
    test_support::eventually("p1 at zone-1 over TLS", DEADLINE, || async {
        zone_store.get(&p1).await.ok()?.map(|_| ())
    })
    .await?;
    let proxy_key = ResourceKey::new(
        ResourceType::GlobalSecret,
        None,
        KeyFamily::zone_proxy_tokens().key_name(1),
    );
    test_support::eventually("the zone proxies' key at zone-1", DEADLINE, || async {
        zone_store.get(&proxy_key).await.ok()?.map(|_| ())
    })
    .await?;
    let zone_key = ResourceKey::new(ResourceType::GlobalSecret, None, zone_tokens.key_name(1));
    assert!(store.get(&zone_key).await?.is_some());
    assert!(
        zone_store.get(&zone_key).await?.is_none(),
        "zone-token key sent to a zone"
    );

    // zone-1's token does not let a stream act as zone-2.
    let imposter_store = Arc::new(SledStore::open(dir.path().join("zone-2"))?);
    let mut imposter =
        KdsClientConfig::new("zone-2", format!("https://{addr}"), imposter_store.clone());
    imposter.tls = Some(client_tls_config(&ca, "localhost"));
    imposter.token = TokenSource::Static(first_token.clone());
    let imposter_status = imposter.status.clone();
    let (stop_imposter, imposter_stopped) = oneshot::channel::<()>();
    let imposter_task = tokio::spawn(kds::run(imposter, async {
        let _ = imposter_stopped.await;
    }));
    test_support::eventually("the imposter is refused", DEADLINE, || async {
        imposter_status.snapshot().last_error.map(|_| ())
    })
    .await?;
    let refusal = imposter_status.snapshot().last_error.unwrap_or_default();
    assert!(refusal.contains("not for zone \"zone-2\""), "{refusal}");
    assert!(!imposter_status.is_connected());
    assert!(imposter_store.get(&p1).await?.is_none());
    let _ = stop_imposter.send(());
    imposter_task.await??;

    // Rotate: a new token in the file, the old one revoked; restart the global so the zone
    // redials. Only the re-read token can get in.
    let (second_token, _) = issuer
        .issue(
            &zone_tokens,
            "zone-1",
            Duration::from_secs(3600),
            chrono::Utc::now(),
        )
        .await?;
    std::fs::write(&token_file, &second_token)?;
    issuer
        .revoke(&zone_tokens, &decode_unverified(&first_token)?.jti)
        .await?;
    global.stop().await;
    store.create(policy("p2")).await?;
    let (global, _) = start_global(store.clone(), &tls, issuer.clone(), addr).await;
    let p2 = ResourceKey::new(ResourceType::MeshTimeout, Some("default"), "p2");
    test_support::eventually(
        "p2 after the redial with the new token",
        DEADLINE,
        || async { zone_store.get(&p2).await.ok()?.map(|_| ()) },
    )
    .await?;
    assert!(status.snapshot().dials >= 2);
    assert!(global.status.zone("zone-1").is_some_and(|s| s.online));
    assert!(global.status.zone("zone-2").is_none());

    let _ = stop_zone.send(());
    zone.await??;
    global.stop().await;
    Ok(())
}
