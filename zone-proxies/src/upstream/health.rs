//! Active health checks: per cluster, one task per host probes it every `interval` (TCP: a
//! connection opens; HTTP: a GET of `path` answers with an expected status, within `timeout`)
//! and marks it failed after `unhealthy_threshold` consecutive failures, healthy again after
//! `healthy_threshold` consecutive successes; a host's very first check, when it passes, makes
//! it healthy at once (a new host starts failed and waits for it, as in Envoy, where the first
//! check of a host skips the healthy threshold). Tasks end when the cluster's hosts or checks
//! change (a new checker takes over) or the cluster goes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::{EndpointAddress, HealthCheck, HealthCheckKind};
use crate::stats::ClusterStats;

use super::cluster::Host;

/// The running checks of one cluster; dropping it stops them.
pub struct HealthChecker {
    checks: Vec<HealthCheck>,
    hosts: Vec<Arc<Host>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl HealthChecker {
    pub fn spawn(
        cluster: &str,
        checks: &[HealthCheck],
        hosts: &[Arc<Host>],
        stats: &Arc<ClusterStats>,
    ) -> HealthChecker {
        let mut tasks = Vec::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            for host in hosts {
                for check in checks {
                    tasks.push(tokio::spawn(check_loop(
                        cluster.to_string(),
                        check.clone(),
                        host.clone(),
                        stats.clone(),
                    )));
                }
            }
        }
        HealthChecker {
            checks: checks.to_vec(),
            hosts: hosts.to_vec(),
            tasks,
        }
    }

    /// Whether this checker already runs `checks` on exactly `hosts`.
    pub fn runs_for(&self, checks: &[HealthCheck], hosts: &[Arc<Host>]) -> bool {
        self.checks == checks
            && self.hosts.len() == hosts.len()
            && self.hosts.iter().zip(hosts).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

async fn check_loop(
    cluster: String,
    check: HealthCheck,
    host: Arc<Host>,
    stats: Arc<ClusterStats>,
) {
    let mut interval = tokio::time::interval(check.interval.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut failures, mut successes) = (0u32, 0u32);
    loop {
        interval.tick().await;
        stats.health_check_attempt.fetch_add(1, Ordering::Relaxed);
        let ok = matches!(
            tokio::time::timeout(check.timeout, probe(&check.kind, &host.address)).await,
            Ok(Ok(true))
        );
        let first = host.first_health_check();
        if ok {
            stats.health_check_success.fetch_add(1, Ordering::Relaxed);
            failures = 0;
            successes += 1;
            if host.health_check_failed() && (first || successes >= check.healthy_threshold.max(1))
            {
                tracing::info!(%cluster, host = ?host.address, "health check: healthy");
                host.set_health_check_failed(false);
            }
        } else {
            stats.health_check_failure.fetch_add(1, Ordering::Relaxed);
            successes = 0;
            failures += 1;
            if !host.health_check_failed() && failures >= check.unhealthy_threshold.max(1) {
                tracing::info!(%cluster, host = ?host.address, "health check: unhealthy");
                host.set_health_check_failed(true);
            }
        }
    }
}

async fn connect(address: &EndpointAddress) -> std::io::Result<TcpStream> {
    match address {
        EndpointAddress::Socket(addr) => TcpStream::connect(addr).await,
        EndpointAddress::Host(name, port) => TcpStream::connect((name.as_str(), *port)).await,
    }
}

/// One probe: `Ok(true)` healthy.
async fn probe(kind: &HealthCheckKind, address: &EndpointAddress) -> std::io::Result<bool> {
    let mut stream = connect(address).await?;
    match kind {
        HealthCheckKind::Tcp => Ok(true),
        HealthCheckKind::Http {
            path,
            expected_statuses,
        } => {
            let host = match address {
                EndpointAddress::Socket(a) => a.to_string(),
                EndpointAddress::Host(n, p) => format!("{n}:{p}"),
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meridian-health-check\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            // The status line is all that matters; read until it is complete.
            let mut buf = Vec::with_capacity(64);
            let mut chunk = [0u8; 256];
            while !buf.contains(&b'\n') && buf.len() < 4096 {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let line = String::from_utf8_lossy(&buf);
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let expected = if expected_statuses.is_empty() {
                &[(200, 201)][..]
            } else {
                expected_statuses
            };
            Ok(expected
                .iter()
                .any(|(lo, hi)| status >= *lo && status < *hi))
        }
    }
}
