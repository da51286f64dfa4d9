//! The open-loop client: request `i` is due at `start + i / rate`, whatever happened to the
//! ones before it, so a slow or failing upstream shows as latency and failures instead of a
//! quietly lower request rate. At most `concurrency` requests are in flight; one that falls due
//! while the limit is reached is counted as `not_sent` rather than queued (queueing would shift
//! the schedule and hide the stall).
//!
//! One task owns the schedule and the tallies; each request runs in its own task and hands its
//! outcome back over a channel, so recording needs no lock.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};

use crate::report::{Outcome, Report, ReportKind, Tally};

/// What to call, how fast and for how long.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// An `http://` URL; its path and query are requested as they are.
    pub target: Uri,
    /// Requests per second.
    pub rate: f64,
    /// How long to keep sending; `rate * duration` requests are due in all.
    pub duration: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Longest wait for a complete answer, connecting included.
    pub timeout: Duration,
    /// Report every this often while running (`None`: only the final report).
    pub report_every: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("target {0}: only http:// URLs with a host are supported")]
    Target(Uri),
    #[error("rate {0}: must be a positive number of requests per second")]
    Rate(f64),
    #[error("duration {0:?}: must be at least one request interval (1 / rate)")]
    Duration(Duration),
    #[error("concurrency must be at least 1")]
    Concurrency,
    #[error("timeout must be longer than zero")]
    Timeout,
    #[error("report interval must be longer than zero")]
    ReportEvery,
}

impl CallConfig {
    fn validate(&self) -> Result<u64, CallError> {
        if self.target.scheme_str() != Some("http") || self.target.host().is_none() {
            return Err(CallError::Target(self.target.clone()));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(CallError::Rate(self.rate));
        }
        let due = (self.duration.as_secs_f64() * self.rate).floor();
        if due < 1.0 {
            return Err(CallError::Duration(self.duration));
        }
        if self.concurrency == 0 {
            return Err(CallError::Concurrency);
        }
        if self.timeout.is_zero() {
            return Err(CallError::Timeout);
        }
        if self.report_every.is_some_and(|every| every.is_zero()) {
            return Err(CallError::ReportEvery);
        }
        Ok(due as u64)
    }
}

/// Calls `config.target` on schedule until `config.duration` has passed (or `shutdown`
/// completes: then nothing more is sent), waits for the requests in flight, and returns the
/// final report. `on_period` gets each periodic report as it is made.
pub async fn call(
    config: CallConfig,
    shutdown: impl Future<Output = ()>,
    mut on_period: impl FnMut(&Report),
) -> Result<Report, CallError> {
    let mut due = config.validate()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(config.concurrency)
        .build(connector);
    let in_flight = Arc::new(Semaphore::new(config.concurrency));
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();

    let start = Instant::now();
    let due_at = |i: u64| start + Duration::from_secs_f64(i as f64 / config.rate);
    let mut next = 0u64;
    let next_due = tokio::time::sleep_until(start);
    tokio::pin!(next_due);
    let mut ticker = config.report_every.map(|every| {
        let mut ticker = tokio::time::interval_at(start + every, every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    tokio::pin!(shutdown);
    let mut stopping = false;

    let mut run = Tally::new();
    let mut period = Tally::new();
    let mut period_start = start;
    let (mut sent, mut completed) = (0u64, 0u64);
    let mut last_send = start;
    loop {
        let sending = next < due;
        if !sending && completed == sent {
            break;
        }
        tokio::select! {
            biased;
            Some(outcome) = outcomes.recv() => {
                period.record(&outcome);
                completed += 1;
            }
            () = &mut next_due, if sending => {
                // Everything due by now goes out, so a late wake-up (timers are per
                // millisecond) catches up instead of lowering the rate.
                let now = Instant::now();
                while next < due && due_at(next) <= now {
                    match Arc::clone(&in_flight).try_acquire_owned() {
                        Ok(permit) => {
                            period.sent();
                            sent += 1;
                            let request = send(client.clone(), config.target.clone(), config.timeout);
                            let outcomes_tx = outcomes_tx.clone();
                            tokio::spawn(async move {
                                let outcome = request.await;
                                drop(permit);
                                let _ = outcomes_tx.send(outcome);
                            });
                        }
                        Err(_) => period.not_sent(),
                    }
                    next += 1;
                }
                last_send = now;
                if next < due {
                    next_due.as_mut().reset(due_at(next));
                }
            }
            _ = tick(&mut ticker) => {
                let now = Instant::now();
                let report = period.report(ReportKind::Period, now - start, now - period_start);
                on_period(&report);
                run.absorb(&period);
                period.clear();
                period_start = now;
            }
            () = &mut shutdown, if !stopping => {
                stopping = true;
                due = next;
            }
        }
    }
    run.absorb(&period);
    let elapsed = start.elapsed();
    let mut report = run.report(ReportKind::Final, elapsed, elapsed);
    // The rate is over the sending window, not the wait for the last answers: `next` requests
    // span `next / rate` on schedule, or longer if the client fell behind.
    let window = Duration::from_secs_f64(next as f64 / config.rate).max(last_send - start);
    if !window.is_zero() {
        report.sent_per_sec = report.sent as f64 / window.as_secs_f64();
    }
    Ok(report)
}

/// The next periodic tick, or never when there is no period.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One GET, classified. The timeout covers connecting, the head and the whole body.
async fn send(
    client: Client<HttpConnector, Empty<Bytes>>,
    target: Uri,
    timeout: Duration,
) -> Outcome {
    let request = Request::get(target)
        .body(Empty::new())
        .expect("a GET of a validated URI is a valid request");
    let started = Instant::now();
    let exchange = async {
        let response = client.request(request).await.map_err(|error| {
            if error.is_connect() {
                Outcome::Connect
            } else {
                Outcome::Io
            }
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| Outcome::Io)?
            .to_bytes();
        Ok::<_, Outcome>((status, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Outcome::Timeout,
        Ok(Err(failure)) => failure,
        Ok(Ok((status, body))) => Outcome::Answer {
            status,
            latency: started.elapsed(),
            body,
        },
    }
}
