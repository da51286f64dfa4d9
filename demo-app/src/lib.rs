//! demo-app: the small HTTP service Meridian's demos and tests put behind sidecars, and the
//! open-loop client that calls it.
//!
//! `server` answers `/` with who it is (service, zone, instance, version), plus `/health`,
//! `/status/{code}`, `/delay/{ms}` and an optional share of 503s, so routing, retries, outlier
//! detection and failover can be watched from outside. `client` sends GETs on a fixed schedule
//! (open loop: a slow answer never delays the next request) and returns a `Report`: counts by
//! outcome, latency percentiles, and which zones, instances and versions answered. Both take a
//! shutdown future, so tests run them in-process; `cli` is the command line of the thin binary.

pub mod cli;
pub mod client;
pub mod report;
pub mod server;

pub use client::{call, CallConfig, CallError};
pub use report::{Failures, Latency, Report, ReportKind};
pub use server::{serve, Identity, ServeError, ServerConfig};
