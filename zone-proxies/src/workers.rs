//! The data path's worker threads, as Envoy's `--concurrency`: each worker is an OS thread
//! running a single-threaded tokio runtime. Every listener is accepted on by every worker (one
//! listening socket, registered in each worker's event loop), and a connection lives on the
//! worker that accepted it, with its requests and the upstream connections it opens: no task
//! moves between threads, and no work-stealing scheduler is paid for on every wake-up. The
//! control side (xDS, SDS, the admin server, health checks, building each configuration
//! version) runs on the runtime that starts the data plane.
//!
//! Against one multi-threaded runtime with the same number of workers: 3% fewer user-space
//! instructions per request on the one-hop benchmark, the wall clock within its noise
//! (docs/benchmarks.md, "Worker threads, mimalloc, pinned CPUs").

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Running worker threads; dropping it stops them (their connections end with them).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            let thread = std::thread::Builder::new()
                .name(format!("zone-proxy-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                })?;
            workers.threads.push((stop, thread));
        }
        Ok(workers)
    }

    /// One worker per CPU the process may run on (Envoy's default concurrency).
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    /// The workers' runtimes, to spawn accept loops on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (stop, thread) in self.threads.drain(..) {
            let _ = stop.send(());
            // A worker dropped from inside one of the runtimes cannot wait for its own thread.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_the_workers_own_threads_and_they_stop_when_dropped() {
        let workers = Workers::start(2).unwrap();
        let names: Vec<String> = workers
            .handles()
            .iter()
            .map(|h| {
                let task = h.spawn(async { std::thread::current().name().map(str::to_owned) });
                futures::executor::block_on(task).unwrap().unwrap()
            })
            .collect();
        assert_eq!(names, ["zone-proxy-worker-0", "zone-proxy-worker-1"]);
        let handle = workers.handles()[0].clone();
        drop(workers);
        // A stopped runtime's handle refuses new tasks (they are cancelled at once).
        let late = futures::executor::block_on(handle.spawn(async {}));
        assert!(late.is_err_and(|e| e.is_cancelled()));
    }
}
