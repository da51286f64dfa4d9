//! The loop behind every piece of state a control plane derives from its store (the zone's
//! ZoneIngress `availableServices` and ZoneInsight, the global's builtin mesh CAs): reconcile
//! once, then again after every change to the types it depends on, coalescing a burst over a few
//! milliseconds; when the watch ends (the watcher lagged or the change log was compacted) list
//! afresh. No timer, no polling.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::ResourceType;
use mesh_store::{ResourceStore, StoreError};

/// How long to wait for more changes after one arrives, so a burst costs one reconciliation.
const COALESCE: Duration = Duration::from_millis(5);

/// Runs `reconcile` now and after every change of a `watched` type until `shutdown` is set.
pub async fn run<F, Fut>(
    store: Arc<dyn ResourceStore>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    watched: &[ResourceType],
    mut reconcile: F,
) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    loop {
        let from = store.revision();
        reconcile().await?;
        let mut watch = store.watch(from)?;
        loop {
            let event = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                event = watch.next() => event,
            };
            match event {
                None => return Ok(()),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reconciler watch ended; listing again");
                    break;
                }
                Some(Ok(event)) => {
                    if !watched.contains(&event.resource.resource_type()) {
                        continue;
                    }
                    let deadline = tokio::time::Instant::now() + COALESCE;
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout_at(deadline, watch.next()).await
                    {}
                    reconcile().await?;
                }
            }
        }
    }
}
