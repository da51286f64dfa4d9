//! The pieces the end-to-end tests build a mesh from, on a [`Federation`](crate::federation):
//! a service instance (demo app and its sidecar), a zone's ingress reached by other zones through
//! a `FaultRelay` (its advertised address, so a test can cut the link between zones), a zone's
//! egress, a client sidecar with an outbound, and the waits and load the tests measure with.

use std::time::Duration;

use test_support::relay::FaultRelay;
use zone_proxies::ProxyMode;

use crate::federation::{free_port, http_get, DemoService, ProxyProcess, ZoneCp};

/// The default mesh with builtin mTLS, everything allowed (the policies tests add are more
/// specific than this mesh-wide MeshTrafficPermission).
pub const MTLS_MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n---\ntype: MeshTrafficPermission\nname: allow-all\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Allow\n";

/// For `backend` (a `to` MeshService entry, more specific than the mesh's default policies):
/// retries with a short per-try timeout and a retry budget above the requests in flight at the
/// cut (Envoy's default of 3 concurrent retries would fail the rest), outlier detection ejecting
/// a failing ingress quickly and letting it back soon, a 1 s connect timeout (a connection into a
/// blackhole waits that long before its request is retried elsewhere), and zone-2 preferred over
/// zone-3.
pub const RESILIENCE: &str = "type: MeshRetry\nname: retry\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: backend\n    default:\n      http:\n        numRetries: 5\n        perTryTimeout: 300ms\n        backOff:\n          baseInterval: 10ms\n          maxInterval: 50ms\n        retryOn:\n        - 5xx\n        - GatewayError\n        - Reset\n        - ConnectFailure\n---\ntype: MeshCircuitBreaker\nname: eject\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: backend\n    default:\n      connectionLimits:\n        maxRetries: 1000\n      outlierDetection:\n        disabled: false\n        interval: 1s\n        baseEjectionTime: 2s\n        maxEjectionPercent: 100\n        detectors:\n          totalFailures:\n            consecutive: 2\n          gatewayFailures:\n            consecutive: 2\n---\ntype: MeshLoadBalancingStrategy\nname: prefer-zone-2\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: backend\n    default:\n      localityAwareness:\n        crossZone:\n          failover:\n          - to:\n              type: Only\n              zones: [zone-2]\n          - to:\n              type: Only\n              zones: [zone-3]\n---\ntype: MeshTimeout\nname: fast-connect\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: backend\n    default:\n      connectionTimeout: 1s\n";

/// How long a test waits for a change to show in traffic.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `zone` holds the default mesh's CA (synced from the global), which its proxies
/// need for their certificates.
pub async fn wait_for_ca(zone: &ZoneCp) -> anyhow::Result<()> {
    zone.wait_for(
        "the mesh CA",
        &[
            "meshes",
            "default",
            "secrets",
            "default.ca-builtin-cert-ca-1",
        ],
    )
    .await
    .map(|_| ())
}

/// Registers Dataplane `name` of the default mesh in `zone`, one inbound for the app at
/// `app_port` with `tags` (`kuma.io/service` first), and starts its sidecar; returns it ready.
pub async fn sidecar(
    zone: &ZoneCp,
    name: &str,
    app_port: u16,
    tags: &[(&str, &str)],
) -> anyhow::Result<ProxyProcess> {
    let inbound = free_port()?;
    let tags: String = tags
        .iter()
        .map(|(k, v)| format!("        {k}: {v}\n"))
        .collect();
    let yaml = format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {inbound}\n      servicePort: {app_port}\n      tags:\n{tags}"
    );
    zone.apply(&yaml).await?;
    let sidecar = zone
        .start_proxy_defined(ProxyMode::Sidecar, "default", name, Some(&yaml))
        .await?;
    sidecar.wait_ready().await?;
    Ok(sidecar)
}

/// An instance of a service: the demo app and its sidecar.
pub struct Instance {
    pub app: DemoService,
    pub sidecar: ProxyProcess,
}

impl Instance {
    /// Starts `name`, an instance of `service` in `zone`, behind its sidecar; `protocol` is its
    /// `kuma.io/protocol` (`http`, or `http2` for one multiplexed connection per peer);
    /// `version`, when given, is its `version` tag (and what the demo app answers).
    pub async fn start(
        zone: &ZoneCp,
        name: &str,
        service: &str,
        protocol: &str,
        version: Option<&str>,
    ) -> anyhow::Result<Instance> {
        let app = DemoService::start(service, &zone.name, name, version).await?;
        let mut tags = vec![("kuma.io/service", service), ("kuma.io/protocol", protocol)];
        if let Some(version) = version {
            tags.push(("version", version));
        }
        let sidecar = sidecar(zone, name, app.addr.port(), &tags).await?;
        Ok(Instance { app, sidecar })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.sidecar.stop().await?;
        self.app.stop().await;
        Ok(())
    }
}

/// A zone's ingress, and the relay other zones reach it through.
pub struct Ingress {
    pub proxy: ProxyProcess,
    pub link: FaultRelay,
}

impl Ingress {
    /// Registers ZoneIngress `ingress-<zone>` advertising a new relay to it, and starts it.
    pub async fn start(zone: &ZoneCp) -> anyhow::Result<Ingress> {
        Ingress::start_with_seed(zone, rand_seed()).await
    }

    /// The same, the relay's jitter and loss drawing from `seed`.
    pub async fn start_with_seed(zone: &ZoneCp, seed: u64) -> anyhow::Result<Ingress> {
        let port = free_port()?;
        let link = FaultRelay::start_with_seed(([127, 0, 0, 1], port).into(), seed).await?;
        let name = format!("ingress-{}", zone.name);
        let yaml = format!(
            "type: ZoneIngress\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: 127.0.0.1\n  advertisedPort: {}\n",
            link.addr().port()
        );
        zone.apply(&yaml).await?;
        let proxy = zone
            .start_proxy_defined(ProxyMode::Ingress, "default", &name, Some(&yaml))
            .await?;
        proxy.wait_ready().await?;
        Ok(Ingress { proxy, link })
    }
}

/// Registers ZoneEgress `egress-<zone>` and starts it; sidecars of meshes with
/// `routing.zoneEgress` then reach other zones through it.
pub async fn egress(zone: &ZoneCp) -> anyhow::Result<ProxyProcess> {
    let name = format!("egress-{}", zone.name);
    zone.apply(&format!(
        "type: ZoneEgress\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {}\n",
        free_port()?
    ))
    .await?;
    let proxy = zone
        .start_proxy(ProxyMode::Egress, "default", &name)
        .await?;
    proxy.wait_ready().await?;
    Ok(proxy)
}

/// A client sidecar: Dataplane `name` of service `frontend` with an outbound to `target`.
pub struct Client {
    pub sidecar: ProxyProcess,
    /// The outbound's loopback port.
    pub outbound: u16,
}

impl Client {
    /// Registers and starts the sidecar in `zone`; returns it ready.
    pub async fn start(zone: &ZoneCp, name: &str, target: &str) -> anyhow::Result<Client> {
        let outbound = free_port()?;
        let inbound = free_port()?;
        let yaml = format!(
            "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {inbound}\n      servicePort: {}\n      tags:\n        kuma.io/service: frontend\n        kuma.io/protocol: http\n  outbound:\n    - port: {outbound}\n      tags:\n        kuma.io/service: {target}\n",
            free_port()?
        );
        zone.apply(&yaml).await?;
        let sidecar = zone
            .start_proxy_defined(ProxyMode::Sidecar, "default", name, Some(&yaml))
            .await?;
        sidecar.wait_ready().await?;
        Ok(Client { sidecar, outbound })
    }

    /// `http://127.0.0.1:<outbound>/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.outbound)
    }
}

/// Waits until `url` answers 200 from a body naming `zone`.
pub async fn answered_from(url: &str, zone: &str) -> anyhow::Result<()> {
    let needle = format!("\"zone\":\"{zone}\"");
    test_support::eventually(&format!("{url} answered from {zone}"), DEADLINE, || async {
        let (status, body) = http_get(url).await.ok()?;
        (status == 200 && body.contains(&needle)).then_some(())
    })
    .await
}

/// Waits until `url` answers `status`.
pub async fn answered_with(url: &str, status: u16) -> anyhow::Result<()> {
    test_support::eventually(&format!("{url} answering {status}"), DEADLINE, || async {
        (http_get(url).await.ok()?.0 == status).then_some(())
    })
    .await
}

/// `rate` requests a second to `url` for `duration`, open loop (demo-app's client); the final
/// report.
pub async fn load(
    url: &str,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<demo_app::report::Report> {
    Ok(demo_app::client::call(
        demo_app::client::CallConfig {
            target: url.parse()?,
            rate,
            duration,
            // Above what hangs during a blackhole (rate x per-try timeouts), so every request is sent.
            concurrency: 1024,
            timeout: Duration::from_secs(5),
            report_every: None,
        },
        std::future::pending(),
        |_| {},
    )
    .await?)
}

/// The inbound port of Dataplane `name` (default mesh) as `zone` holds it.
pub async fn inbound_port(zone: &ZoneCp, name: &str) -> anyhow::Result<u16> {
    let dataplane = zone
        .wait_for(name, &["meshes", "default", "dataplanes", name])
        .await?;
    let port = dataplane["networking"]["inbound"][0]["port"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("Dataplane {name} has no inbound port: {dataplane}"))?;
    Ok(u16::try_from(port)?)
}

/// A seed from the clock, for links whose randomness no test replays.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}
