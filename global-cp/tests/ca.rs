//! The builtin CA end to end: a Mesh enabling a `builtin` mTLS backend, applied on a real global,
//! gets its CA as two Secrets there; KDS brings them to a real zone (`zone_cp::run`, in-process);
//! the CA loaded from the zone's own store issues a workload certificate that verifies against
//! the CA; and a restarted global keeps the CA it made.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::Spec;
use mesh_store::SledStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::Value;

mod common;
use common::{start_global, Global};

const MESH: &str = "type: Mesh\nname: secure\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    conf:\n      caCert:\n        RSAbits: 2048\n        expiration: 1y\n    dpCert:\n      rotation:\n        expiration: 2h\n";
const CERT: &str = "secure.ca-builtin-cert-ca-1";
const KEY: &str = "secure.ca-builtin-key-ca-1";
const DEADLINE: Duration = Duration::from_secs(60);

/// GET `url`: the body and ETag when it answers 200.
/// GETs `url` with the admin `token` (secrets are not readable without it).
async fn get(client: &reqwest::Client, url: String, token: &str) -> Option<(Value, String)> {
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .ok()
        .filter(|r| r.status() == 200)?;
    let etag = response.headers().get("etag")?.to_str().ok()?.to_owned();
    Some((response.json().await.ok()?, etag))
}

/// Waits until Secret `name` of mesh `secure` is served by the REST API at `api`.
async fn secret(client: &reqwest::Client, api: &str, token: &str, name: &str) -> (Value, String) {
    test_support::eventually(&format!("secret {name} at {api}"), DEADLINE, || {
        get(client, format!("{api}/meshes/secure/secrets/{name}"), token)
    })
    .await
    .unwrap()
}

async fn apply_mesh(global: &Global, yaml: &str, name: &str) {
    let status = global
        .send(
            global
                .client
                .put(format!("{}/meshes/{name}", global.api))
                .body(yaml.to_owned()),
        )
        .await;
    assert_eq!(status, 201, "PUT /meshes/{name}");
}

/// Opens a stopped control plane's store, waiting until its last holder has let go of it.
async fn open_store(data_dir: &Path) -> SledStore {
    let path = data_dir.join("store");
    test_support::eventually("the store to be free", DEADLINE, || {
        let path = path.clone();
        async move { SledStore::open(path).ok() }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_builtin_mesh_ca_is_made_once_at_the_global_and_used_in_the_zone() {
    let dir = tempfile::tempdir().unwrap();
    let global_dir = dir.path().join("global");
    let global = start_global(&global_dir).await;
    let zone_dir = dir.path().join("zone-1");
    let config = global.zone_config(dir.path(), "zone-1").await;
    let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
    let zone_api = format!("http://{}", listeners.api.local_addr().unwrap());
    let (stop_zone, zone_stopped) = tokio::sync::oneshot::channel::<()>();
    let zone = tokio::spawn(zone_cp::run(config, listeners, async {
        let _ = zone_stopped.await;
    }));

    apply_mesh(&global, MESH, "secure").await;
    let client = reqwest::Client::new();
    let (global_cert, global_cert_etag) = secret(&client, &global.api, &global.token, CERT).await;
    let (global_key, _) = secret(&client, &global.api, &global.token, KEY).await;
    let zone_token = std::fs::read_to_string(zone_dir.join("admin-token")).unwrap();
    let zone_token = zone_token.trim();
    let (zone_cert, _) = secret(&client, &zone_api, zone_token, CERT).await;
    let (zone_key, _) = secret(&client, &zone_api, zone_token, KEY).await;
    // The CA key is not readable without the admin token, at the global or in the zone.
    for api in [&global.api, &zone_api] {
        let anonymous = client
            .get(format!("{api}/meshes/secure/secrets/{KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401, "{api}");
        let listed = client
            .get(format!("{api}/meshes/secure/secrets"))
            .send()
            .await
            .unwrap();
        assert_eq!(listed.status(), 401, "{api}");
    }
    assert_eq!(zone_cert["data"], global_cert["data"]);
    assert_eq!(zone_key["data"], global_key["data"]);

    // The zone's own copy is a usable CA.
    stop_zone.send(()).unwrap();
    zone.await.unwrap().unwrap();
    let zone_store = open_store(&zone_dir).await;
    let mesh = mesh_api::parse_documents(MESH).remove(0).unwrap().resource;
    let Spec::Mesh(spec) = &mesh.spec else {
        panic!("not a Mesh")
    };
    let ca = mesh_ca::load_mesh_ca(&zone_store, "secure", spec)
        .await
        .unwrap()
        .expect("a builtin CA");
    drop(zone_store);
    assert_eq!(ca.rsa_bits(), Some(2048));
    let lifetime = ca.not_after().duration_since(ca.not_before()).unwrap();
    assert_eq!(
        lifetime,
        Duration::from_secs(365 * 86_400) + mesh_ca::CLOCK_SKEW
    );

    let backend = spec.enabled_mtls_backend().unwrap();
    let validity = mesh_ca::workload_validity(backend);
    assert_eq!(validity, Duration::from_secs(2 * 3600));
    let identity = mesh_ca::WorkloadIdentity {
        services: vec!["web".into()],
        ..mesh_ca::WorkloadIdentity::default()
    };
    let now = SystemTime::now();
    let cert = ca.issue(&identity, validity, now).unwrap();
    let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
    let leaf_der = CertificateDer::from_pem_slice(cert.cert_chain_pem.as_bytes()).unwrap();
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap()),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("the workload certificate chains to the zone's copy of the CA");

    // A restarted global keeps the CA. Once it has made a CA for a mesh applied after the
    // restart, its reconciler has passed over `secure` too.
    global.stop().await;
    drop(open_store(&global_dir.join("data")).await);
    std::fs::remove_file(global_dir.join("ready.json")).unwrap();
    let global = start_global(&global_dir).await;
    apply_mesh(
        &global,
        &MESH.replace("name: secure", "name: later"),
        "later",
    )
    .await;
    test_support::eventually("the later mesh's CA", DEADLINE, || {
        get(
            &client,
            format!(
                "{}/meshes/later/secrets/later.ca-builtin-cert-ca-1",
                global.api
            ),
            &global.token,
        )
    })
    .await
    .unwrap();
    let (after, after_etag) = secret(&client, &global.api, &global.token, CERT).await;
    assert_eq!(after["data"], global_cert["data"], "the CA was regenerated");
    assert_eq!(after_etag, global_cert_etag, "the CA secret was rewritten");
    global.stop().await;
}
