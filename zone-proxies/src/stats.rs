//! Counters, gauges and histograms of the data path, rendered in Prometheus text with Envoy's
//! names as Envoy's own `/stats/prometheus` spells them: `envoy_cluster_<stat>` labelled
//! `envoy_cluster_name`, `envoy_listener_<stat>` labelled `envoy_listener_name`, `envoy_http_<stat>`
//! labelled `envoy_http_conn_manager_prefix`. Dashboards written for Envoy work unchanged.
//!
//! The hot path holds an `Arc` handle per cluster or listener and only touches atomics; the map
//! of handles is locked only when a handle is first made (config updates) and when rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Every statistic of one proxy.
#[derive(Default)]
pub struct Stats {
    clusters: RwLock<BTreeMap<String, Arc<ClusterStats>>>,
    listeners: RwLock<BTreeMap<String, Arc<ListenerStats>>>,
    http: RwLock<BTreeMap<String, Arc<HttpStats>>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stats")
    }
}

fn handle<T: Default>(map: &RwLock<BTreeMap<String, Arc<T>>>, name: &str) -> Arc<T> {
    if let Some(found) = map.read().unwrap_or_else(|e| e.into_inner()).get(name) {
        return found.clone();
    }
    map.write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone()
}

impl Stats {
    pub fn new() -> Arc<Stats> {
        Arc::new(Stats::default())
    }

    /// The handle of one cluster's statistics (made on first use, kept across config updates).
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        handle(&self.clusters, name)
    }

    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        handle(&self.listeners, name)
    }

    /// Per HTTP connection manager (by its stat prefix).
    pub fn http(&self, stat_prefix: &str) -> Arc<HttpStats> {
        handle(&self.http, stat_prefix)
    }

    /// All statistics in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let clusters = self.clusters.read().unwrap_or_else(|e| e.into_inner());
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        let http = self.http.read().unwrap_or_else(|e| e.into_inner());
        for (stat, kind, get) in CLUSTER_SCALARS {
            family(&mut out, &format!("envoy_cluster_{stat}"), kind);
            for (name, c) in clusters.iter() {
                sample(
                    &mut out,
                    &format!("envoy_cluster_{stat}"),
                    &[("envoy_cluster_name", name)],
                    get(c),
                );
            }
        }
        family(&mut out, "envoy_cluster_upstream_rq_xx", "counter");
        for (name, c) in clusters.iter() {
            for (i, class) in ["1", "2", "3", "4", "5"].iter().enumerate() {
                let v = c.upstream_rq_xx[i].load(Ordering::Relaxed);
                sample(
                    &mut out,
                    "envoy_cluster_upstream_rq_xx",
                    &[
                        ("envoy_response_code_class", class),
                        ("envoy_cluster_name", name),
                    ],
                    v as i64,
                );
            }
        }
        family(&mut out, "envoy_cluster_upstream_rq_time", "histogram");
        for (name, c) in clusters.iter() {
            c.upstream_rq_time.render(
                &mut out,
                "envoy_cluster_upstream_rq_time",
                ("envoy_cluster_name", name),
            );
        }
        for (stat, kind, get) in LISTENER_SCALARS {
            family(&mut out, &format!("envoy_listener_{stat}"), kind);
            for (name, l) in listeners.iter() {
                sample(
                    &mut out,
                    &format!("envoy_listener_{stat}"),
                    &[("envoy_listener_name", name)],
                    get(l),
                );
            }
        }
        for (stat, kind, get) in HTTP_SCALARS {
            family(&mut out, &format!("envoy_http_{stat}"), kind);
            for (name, h) in http.iter() {
                sample(
                    &mut out,
                    &format!("envoy_http_{stat}"),
                    &[("envoy_http_conn_manager_prefix", name)],
                    get(h),
                );
            }
        }
        out
    }
}

type Getter<T> = fn(&T) -> i64;

fn c(v: &AtomicU64) -> i64 {
    v.load(Ordering::Relaxed) as i64
}

const CLUSTER_SCALARS: &[(&str, &str, Getter<ClusterStats>)] = &[
    ("upstream_rq_total", "counter", |s| c(&s.upstream_rq_total)),
    ("upstream_rq_active", "gauge", |s| {
        s.upstream_rq_active.load(Ordering::Relaxed)
    }),
    ("upstream_rq_pending_active", "gauge", |s| {
        s.upstream_rq_pending_active.load(Ordering::Relaxed)
    }),
    ("upstream_rq_timeout", "counter", |s| {
        c(&s.upstream_rq_timeout)
    }),
    ("upstream_rq_per_try_timeout", "counter", |s| {
        c(&s.upstream_rq_per_try_timeout)
    }),
    ("upstream_rq_retry", "counter", |s| c(&s.upstream_rq_retry)),
    ("upstream_rq_retry_overflow", "counter", |s| {
        c(&s.upstream_rq_retry_overflow)
    }),
    ("upstream_rq_pending_overflow", "counter", |s| {
        c(&s.upstream_rq_pending_overflow)
    }),
    ("upstream_cx_total", "counter", |s| c(&s.upstream_cx_total)),
    ("upstream_cx_active", "gauge", |s| {
        s.upstream_cx_active.load(Ordering::Relaxed)
    }),
    ("upstream_cx_connect_fail", "counter", |s| {
        c(&s.upstream_cx_connect_fail)
    }),
    ("upstream_cx_overflow", "counter", |s| {
        c(&s.upstream_cx_overflow)
    }),
    ("upstream_cx_none_healthy", "counter", |s| {
        c(&s.upstream_cx_none_healthy)
    }),
    ("upstream_cx_tx_bytes_total", "counter", |s| {
        c(&s.upstream_cx_tx_bytes_total)
    }),
    ("upstream_cx_rx_bytes_total", "counter", |s| {
        c(&s.upstream_cx_rx_bytes_total)
    }),
    ("outlier_detection_ejections_active", "gauge", |s| {
        s.outlier_detection_ejections_active.load(Ordering::Relaxed)
    }),
    ("outlier_detection_ejections_total", "counter", |s| {
        c(&s.outlier_detection_ejections_total)
    }),
    ("health_check_attempt", "counter", |s| {
        c(&s.health_check_attempt)
    }),
    ("health_check_success", "counter", |s| {
        c(&s.health_check_success)
    }),
    ("health_check_failure", "counter", |s| {
        c(&s.health_check_failure)
    }),
    ("membership_total", "gauge", |s| {
        s.membership_total.load(Ordering::Relaxed)
    }),
    ("membership_healthy", "gauge", |s| {
        s.membership_healthy.load(Ordering::Relaxed)
    }),
];

const LISTENER_SCALARS: &[(&str, &str, Getter<ListenerStats>)] = &[
    ("downstream_cx_total", "counter", |s| {
        c(&s.downstream_cx_total)
    }),
    ("downstream_cx_active", "gauge", |s| {
        s.downstream_cx_active.load(Ordering::Relaxed)
    }),
    ("downstream_cx_no_filter_chain_match", "counter", |s| {
        c(&s.no_filter_chain_match)
    }),
    ("downstream_cx_tls_handshake_error", "counter", |s| {
        c(&s.tls_handshake_error)
    }),
    (
        "downstream_cx_rbac_denied",
        "counter",
        |s| c(&s.rbac_denied),
    ),
    ("downstream_cx_local_rate_limited", "counter", |s| {
        c(&s.cx_rate_limited)
    }),
];

const HTTP_SCALARS: &[(&str, &str, Getter<HttpStats>)] = &[
    ("downstream_rq_total", "counter", |s| {
        c(&s.downstream_rq_total)
    }),
    ("downstream_rq_active", "gauge", |s| {
        s.downstream_rq_active.load(Ordering::Relaxed)
    }),
    ("rbac_denied", "counter", |s| c(&s.rbac_denied)),
    ("local_rate_limit_rate_limited", "counter", |s| {
        c(&s.rate_limited)
    }),
    ("fault_aborts_injected", "counter", |s| c(&s.fault_aborts)),
    ("fault_delays_injected", "counter", |s| c(&s.fault_delays)),
    ("no_route", "counter", |s| c(&s.no_route)),
    ("no_cluster", "counter", |s| c(&s.no_cluster)),
    ("downstream_rq_idle_timeout", "counter", |s| {
        c(&s.stream_idle_timeout)
    }),
];

fn family(out: &mut String, name: &str, kind: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: i64) {
    out.push_str(name);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    let _ = writeln!(out, "}} {value}");
}

/// One upstream cluster's statistics.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_active: AtomicI64,
    pub upstream_rq_pending_active: AtomicI64,
    /// By status class: index 0 is 1xx, 4 is 5xx.
    pub upstream_rq_xx: [AtomicU64; 5],
    pub upstream_rq_timeout: AtomicU64,
    pub upstream_rq_per_try_timeout: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_retry_overflow: AtomicU64,
    pub upstream_rq_pending_overflow: AtomicU64,
    pub upstream_rq_time: Histogram,
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_active: AtomicI64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_cx_overflow: AtomicU64,
    pub upstream_cx_none_healthy: AtomicU64,
    pub upstream_cx_tx_bytes_total: AtomicU64,
    pub upstream_cx_rx_bytes_total: AtomicU64,
    pub outlier_detection_ejections_active: AtomicI64,
    pub outlier_detection_ejections_total: AtomicU64,
    pub health_check_attempt: AtomicU64,
    pub health_check_success: AtomicU64,
    pub health_check_failure: AtomicU64,
    pub membership_total: AtomicI64,
    pub membership_healthy: AtomicI64,
}

impl ClusterStats {
    /// Counts a response status in its class.
    pub fn record_status(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.upstream_rq_xx[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// One listener's statistics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub downstream_cx_total: AtomicU64,
    pub downstream_cx_active: AtomicI64,
    pub no_filter_chain_match: AtomicU64,
    pub tls_handshake_error: AtomicU64,
    pub rbac_denied: AtomicU64,
    /// Connections closed by a chain's network local rate limit.
    pub cx_rate_limited: AtomicU64,
}

/// One HTTP connection manager's statistics.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub downstream_rq_total: AtomicU64,
    pub downstream_rq_active: AtomicI64,
    pub rbac_denied: AtomicU64,
    pub rate_limited: AtomicU64,
    pub fault_aborts: AtomicU64,
    pub fault_delays: AtomicU64,
    pub no_route: AtomicU64,
    pub no_cluster: AtomicU64,
    /// Requests ended by the route's idle timeout before their response headers.
    pub stream_idle_timeout: AtomicU64,
}

/// Envoy's default histogram bucket bounds, in milliseconds.
const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A fixed-bucket histogram of durations (milliseconds, Envoy's buckets).
#[derive(Debug)]
pub struct Histogram {
    /// Non-cumulative counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let slot = BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, label: (&str, &str)) {
        let (k, v) = (label.0, escape(label.1));
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{k}=\"{v}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{k}=\"{v}\",le=\"+Inf\"}} {cumulative}");
        let sum_ms = self.sum_us.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{k}=\"{v}\"}} {sum_ms}");
        let _ = writeln!(out, "{name}_count{{{k}=\"{v}\"}} {}", self.count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_envoy_names_per_cluster_with_a_cumulative_histogram() {
        let stats = Stats::new();
        let web = stats.cluster("default:web");
        web.upstream_rq_total.fetch_add(3, Ordering::Relaxed);
        web.record_status(200);
        web.record_status(503);
        web.upstream_rq_time.record(Duration::from_micros(300));
        web.upstream_rq_time.record(Duration::from_millis(7));
        stats
            .listener("inbound")
            .downstream_cx_total
            .fetch_add(1, Ordering::Relaxed);
        let text = stats.render();
        assert!(
            text.contains(
                "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"default:web\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"default:web\"} 1\n"));
        assert!(text.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"default:web\",le=\"0.5\"} 1\n"));
        assert!(text.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"default:web\",le=\"5\"} 1\n"));
        assert!(text.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"default:web\",le=\"10\"} 2\n"));
        assert!(text.contains(
            "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"default:web\"} 2\n"
        ));
        assert!(text
            .contains("envoy_listener_downstream_cx_total{envoy_listener_name=\"inbound\"} 1\n"));
        assert!(text.contains("# TYPE envoy_cluster_upstream_cx_active gauge\n"));
    }
}
