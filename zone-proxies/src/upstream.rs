//! The upstream side: clusters and their endpoint sets ([`cluster`]), picking an endpoint
//! ([`lb`]: priorities with the overprovisioning factor, locality weights, the four policies),
//! connecting to it over TCP or TLS ([`connect`]), and the health state that steers picking
//! ([`outlier`] detection from request outcomes, active [`health`] checks).
//!
//! A [`Clusters`] value is one configuration version's view, rebuilt on every update; what
//! must survive updates (each endpoint's health and outlier state, statistics, connection
//! pools, circuit-breaker counts) lives in `Arc`s carried from the previous version.

pub mod cluster;
pub mod connect;
pub mod health;
pub mod lb;
pub mod outlier;

pub use cluster::{Clusters, Host, UpstreamCluster};
pub use connect::{ConnectError, UpstreamConn};

use crate::config::WeightedCluster;

/// Picks one of `clusters` by weight (all weights zero: the first), `None` when empty.
pub fn pick_weighted(clusters: &[WeightedCluster]) -> Option<&str> {
    use rand::Rng;
    if clusters.len() == 1 {
        return clusters.first().map(|c| c.name.as_str());
    }
    let total: u64 = clusters.iter().map(|c| c.weight as u64).sum();
    if total == 0 {
        return clusters.first().map(|c| c.name.as_str());
    }
    let mut roll = rand::thread_rng().gen_range(0..total);
    for c in clusters {
        if roll < c.weight as u64 {
            return Some(&c.name);
        }
        roll -= c.weight as u64;
    }
    clusters.last().map(|c| c.name.as_str())
}
