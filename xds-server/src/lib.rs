//! The zone control plane's xDS server (issue [3], points 1 and 2): Envoy's
//! `AggregatedDiscoveryService`, state of the world and delta, serving each proxy a
//! [`snapshot::Snapshot`] produced by a [`snapshot::SnapshotSource`] ([`generator`] builds the
//! first real one, for sidecars, from the zone store). [`cache::SnapshotCache`] follows the store's
//! ordered watch and pushes new snapshots to the proxies of the meshes a change touches, coalesced
//! over a few milliseconds. Proxies identify as `<mesh>/<name>` (or `<mesh>.<name>`) and present
//! a dataplane token ([`auth`]), and may register their own resource ([`registration`]); ACKs, NACKs and connections are kept in [`status`]. gRPC's
//! proxyless xDS clients are served too: [`proxyless`] holds their api_listener and the rules
//! their configuration must follow.

pub mod auth;
pub mod cache;
pub mod context;
pub mod generator;
pub mod policy;
pub mod proxyless;
pub mod reachable;
pub mod registration;
pub mod routes;
pub mod server;
pub mod snapshot;
pub mod sni;
pub mod status;

pub use auth::{DataplaneAuthenticator, ProxyId, ProxyKind};
pub use cache::SnapshotCache;
pub use server::{serve, XdsServer};
pub use snapshot::{Snapshot, SnapshotSource};
