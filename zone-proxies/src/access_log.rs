//! Access logs: one JSON object per line, per request (HTTP) or per connection (TCP), written to
//! the configured path by one writer task per path. The data path only sends into a bounded
//! channel; when a writer falls behind, entries are dropped (and counted) rather than slowing
//! traffic.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

const QUEUE: usize = 4096;

/// One destination's sender.
#[derive(Debug, Clone)]
pub struct AccessLogSink {
    path: Arc<str>,
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogSink {
    /// Queues one entry (a JSON object, without the newline).
    pub fn log(&self, entry: serde_json::Value) {
        if self.tx.try_send(entry.to_string()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The writers by path, shared by every configuration version so a path keeps one writer.
#[derive(Debug, Default)]
pub struct AccessLogs {
    sinks: Mutex<HashMap<String, AccessLogSink>>,
}

impl AccessLogs {
    /// The sink for `path`, starting its writer on first use (needs a tokio runtime).
    pub fn sink(&self, path: &str) -> AccessLogSink {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sinks.get(path).filter(|s| !s.tx.is_closed()) {
            return s.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = AccessLogSink {
            path: path.into(),
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let owned = path.to_string();
        tokio::task::spawn_blocking(move || write_loop(&owned, rx));
        sinks.insert(path.to_string(), sink.clone());
        sink
    }
}

fn write_loop(path: &str, mut rx: mpsc::Receiver<String>) {
    let file: Box<dyn Write> = if path == "/dev/stdout" {
        Box::new(std::io::stdout())
    } else {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path, error = %e, "cannot open access log");
                return;
            }
        }
    };
    let mut out = std::io::BufWriter::new(file);
    while let Some(line) = rx.blocking_recv() {
        let _ = writeln!(out, "{line}");
        // Batch whatever is queued, then flush so entries show up promptly.
        while let Ok(line) = rx.try_recv() {
            let _ = writeln!(out, "{line}");
        }
        if let Err(e) = out.flush() {
            tracing::warn!(path, error = %e, "access log write failed");
        }
    }
}

/// A time as RFC 3339 in UTC with milliseconds (the `start_time` field).
pub fn timestamp(at: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
