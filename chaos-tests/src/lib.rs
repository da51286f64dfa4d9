//! Meridian's multi-zone scenarios (issues [4] and [7]). [`federation`] runs a whole federation
//! in one process on the real control planes, so a test can cut links (with
//! `test_support::relay::FaultRelay`), stop and restart components, and check what traffic and
//! state do. The failover scenarios and their report (issue [7]) build on it.

pub mod federation;
