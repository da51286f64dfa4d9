//! Shared by the Raft tests: peer certificates from one generated CA, and nodes on ephemeral
//! loopback ports.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_store::raft::{PeerTls, RaftNode, RaftNodeConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// The name every node's certificate carries and clients check.
pub const SERVER_NAME: &str = "raft.meridian.test";

/// A CA and one certificate (shared by all nodes here; every node could have its own).
pub fn peer_tls() -> PeerTls {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("node key");
    let params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("node params");
    let cert = params.signed_by(&key, &issuer).expect("node certificate");
    PeerTls {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        server_name: SERVER_NAME.to_owned(),
    }
}

/// Starts node `id` with its data under `dir/node-<id>` on 127.0.0.1:0.
pub async fn start_node(
    id: u64,
    dir: &Path,
    tls: &PeerTls,
    tune: impl FnOnce(&mut RaftNodeConfig),
) -> RaftNode {
    start_node_at(id, dir, tls, "127.0.0.1:0", tune).await
}

/// Starts node `id` on `addr` (a restarted node keeps the address its peers know).
pub async fn start_node_at(
    id: u64,
    dir: &Path,
    tls: &PeerTls,
    addr: &str,
    tune: impl FnOnce(&mut RaftNodeConfig),
) -> RaftNode {
    let mut config = RaftNodeConfig::new(id, dir.join(format!("node-{id}")), tls.clone());
    tune(&mut config);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    RaftNode::start(config, listener).await.expect("start node")
}

/// Waits until `node` sees a leader (any), returning its id.
pub async fn wait_for_leader(node: &RaftNode, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut metrics = node.raft().metrics();
    loop {
        if let Some(leader) = metrics.borrow().current_leader {
            return leader;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "node {} saw no leader within {timeout:?}",
            node.id()
        );
        let _ = tokio::time::timeout(left, metrics.changed()).await;
    }
}
