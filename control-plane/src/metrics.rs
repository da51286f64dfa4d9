//! Prometheus metrics of a control plane: REST requests by method, route and status with their
//! latency, and store operations by kind and outcome. [`MeteredStore`] wraps any store so every
//! operation is counted where it happens.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use mesh_api::{Resource, ResourceKey};
use mesh_store::{ListPage, ListQuery, ResourceStore, StoreError, Watch};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route template (`/meshes/:mesh/:plural/:name`), never the raw path, so the
    /// number of series stays bounded.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub operation: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

/// Every metric a control plane exports, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_request_duration: Family<OperationLabels, Histogram>,
    pub store_operations: Family<StoreLabels, Counter>,
    pub store_operation_duration: Family<OperationLabels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meridian");
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "REST API requests by method, route and status",
            api_requests.clone(),
        );
        let api_request_duration = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "api_request_duration_seconds",
            "REST API request latency by method",
            api_request_duration.clone(),
        );
        let store_operations = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_operations",
            "Store operations by kind and result",
            store_operations.clone(),
        );
        let store_operation_duration = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "store_operation_duration_seconds",
            "Store operation latency by kind",
            store_operation_duration.clone(),
        );
        Metrics {
            registry,
            api_requests,
            api_request_duration,
            store_operations,
            store_operation_duration,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn observe_store<T>(
        &self,
        operation: &'static str,
        started: Instant,
        result: &Result<T, StoreError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(StoreError::NotFound(_)) => "not_found",
            Err(StoreError::AlreadyExists(_)) | Err(StoreError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        self.store_operations
            .get_or_create(&StoreLabels {
                operation,
                result: outcome,
            })
            .inc();
        self.store_operation_duration
            .get_or_create(&OperationLabels { operation })
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A store that counts and times every operation of the store it wraps.
pub struct MeteredStore {
    inner: Arc<dyn ResourceStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ResourceStore>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }
}

#[async_trait]
impl ResourceStore for MeteredStore {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.metrics.observe_store("get", started, &result);
        result
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let started = Instant::now();
        let result = self.inner.list(query).await;
        self.metrics.observe_store("list", started, &result);
        result
    }

    async fn create(&self, resource: Resource) -> Result<Resource, StoreError> {
        let started = Instant::now();
        let result = self.inner.create(resource).await;
        self.metrics.observe_store("create", started, &result);
        result
    }

    async fn update(&self, resource: Resource) -> Result<Resource, StoreError> {
        let started = Instant::now();
        let result = self.inner.update(resource).await;
        self.metrics.observe_store("update", started, &result);
        result
    }

    async fn delete(
        &self,
        key: &ResourceKey,
        expected_version: Option<u64>,
    ) -> Result<Resource, StoreError> {
        let started = Instant::now();
        let result = self.inner.delete(key, expected_version).await;
        self.metrics.observe_store("delete", started, &result);
        result
    }

    fn revision(&self) -> u64 {
        self.inner.revision()
    }

    fn watch(&self, from_revision: u64) -> Result<Watch, StoreError> {
        self.inner.watch(from_revision)
    }
}
