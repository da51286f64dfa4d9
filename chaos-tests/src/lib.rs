//! Meridian's multi-zone scenarios (issues [4] and [7]). [`federation`] runs a whole federation
//! in one process on the real control planes (the global also as a child process, to kill it),
//! so a test can cut links (with `test_support::relay::FaultRelay`), stop and restart components,
//! and check what traffic and state do; [`topology`] builds services, sidecars, ingresses and
//! egresses on it; [`mtls`] probes a sidecar's inbound with certificates of chosen CAs. The
//! failover scenarios (issue [7]) are written once in [`scenario`]'s language and run on
//! them; [`report`] renders their outcomes; [`container`] runs them on the
//! compose federation (the container tier).

pub mod container;
pub mod federation;
pub mod mtls;
pub mod report;
pub mod scenario;
pub mod topology;
