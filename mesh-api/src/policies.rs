//! New-style targetRef policies (fields under `spec:`), plus MeshExternalService and MeshService.

pub mod mesh_access_log;
pub mod mesh_circuit_breaker;
pub mod mesh_external_service;
pub mod mesh_fault_injection;
pub mod mesh_health_check;
pub mod mesh_http_route;
pub mod mesh_load_balancing_strategy;
pub mod mesh_metric;
pub mod mesh_rate_limit;
pub mod mesh_retry;
pub mod mesh_service;
pub mod mesh_tcp_route;
pub mod mesh_timeout;
pub mod mesh_trace;
pub mod mesh_traffic_permission;
