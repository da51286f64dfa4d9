//! Probing a sidecar's mTLS inbound from outside the mesh's proxies: one HTTP/1.1 request over
//! TLS presenting a workload certificate from a CA the test picks, the mesh's own (read from the
//! zone, as the zone's proxies get it) or another one, to show which the inbound accepts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use mesh_ca::{MeshCa, WorkloadIdentity};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use zone_proxies::config::{Secret, UpstreamTls};

use crate::federation::ZoneCp;

/// A new builtin CA for `mesh`: as far as the mesh's proxies know, another mesh's CA.
pub fn foreign_ca(mesh: &str) -> anyhow::Result<MeshCa> {
    let backend = mesh_api::core::mesh::CaBackend {
        name: "ca-1".into(),
        backend_type: "builtin".into(),
        conf: Some(serde_json::json!({"caCert": {"RSAbits": 2048, "expiration": "1d"}})),
        ..Default::default()
    };
    Ok(MeshCa::generate(mesh, &backend)?)
}

/// The builtin CA of `mesh` (backend `backend`) as zone `zone` holds it: its two Secrets.
pub async fn mesh_ca(zone: &ZoneCp, mesh: &str, backend: &str) -> anyhow::Result<MeshCa> {
    let pem = |kind: &'static str| {
        let name = format!("{mesh}.ca-builtin-{kind}-{backend}");
        async move {
            let secret = zone
                .wait_for(
                    &format!("secret {name}"),
                    &["meshes", mesh, "secrets", &name],
                )
                .await?;
            let spec = mesh_api::core::secret::SecretSpec {
                data: secret["data"]
                    .as_str()
                    .with_context(|| format!("secret {name} has no data: {secret}"))?
                    .to_string(),
            };
            let bytes = spec
                .bytes()
                .with_context(|| format!("secret {name}: data is not base64"))?;
            String::from_utf8(bytes).with_context(|| format!("secret {name} is not PEM"))
        }
    };
    let cert = pem("cert").await?;
    let key = pem("key").await?;
    Ok(MeshCa::from_pem(mesh, backend, &cert, &key)?)
}

/// A workload certificate of `ca` for `spiffe://<mesh>/<service>`, valid for an hour.
pub fn workload(ca: &MeshCa, service: &str) -> anyhow::Result<Secret> {
    let identity = WorkloadIdentity {
        services: vec![service.to_string()],
        ..Default::default()
    };
    let cert = ca.issue(&identity, Duration::from_secs(3600), SystemTime::now())?;
    Ok(Secret::Certificate {
        chain_pem: cert.cert_chain_pem,
        key_pem: cert.key_pem,
    })
}

/// `GET /` over TLS to `addr` presenting `certificate`, without checking the server's (the probe
/// is about the server's check of the client): the response's status line, or an error when the
/// server refuses the handshake or closes without answering.
pub async fn get_over_mtls(addr: SocketAddr, certificate: Secret) -> anyhow::Result<String> {
    let secrets: zone_proxies::tls::Secrets = [("probe".to_string(), Arc::new(certificate))].into();
    let tls = zone_proxies::tls::client_tls(
        &UpstreamTls {
            sni: "probe.mesh".into(),
            certificate: Some("probe".into()),
            trusted_ca: None,
            match_san: Vec::new(),
            alpn: Vec::new(),
        },
        &secrets,
    )?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut stream = tokio_rustls::TlsConnector::from(tls.config)
            .connect(tls.sni, tcp)
            .await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await?;
        // The status line is enough; a peer closing without close_notify after it is fine.
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        while !response.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(e) if response.is_empty() => return Err(e.into()),
                Err(_) => break,
            }
        }
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("{addr}: no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    anyhow::ensure!(
        !status.is_empty(),
        "{addr} closed the connection without answering"
    );
    Ok(status.to_string())
}
