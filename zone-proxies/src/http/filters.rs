//! The request filters before routing: the local rate limit (a token bucket per connection
//! manager, refilled lazily from elapsed time, one atomic per request) and fault injection.

use std::future::Future as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

use http::request::Parts;

use super::route::HeaderMatcher;
use crate::config::{FaultInjection, LocalRateLimit};
use crate::downstream::ConnContext;
use crate::matcher::{PatternError, StringMatcher};
use crate::upstream::cluster::now_ms;

/// A response body sent no faster than a rate: frames are cut into pieces of a tenth of a
/// second's worth, each released when the bytes before it are due (Envoy's fault filter
/// `response_rate_limit`).
pub struct Throttled {
    inner: super::client::Body,
    bytes_per_sec: u64,
    started: Option<tokio::time::Instant>,
    sent: u64,
    pending: Option<bytes::Bytes>,
    wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Throttled {
    pub fn new(inner: super::client::Body, kbps: u64) -> Throttled {
        Throttled {
            inner,
            bytes_per_sec: kbps.max(1) * 1024,
            started: None,
            sent: 0,
            pending: None,
            wait: None,
        }
    }
}

impl hyper::body::Body for Throttled {
    type Data = bytes::Bytes;
    type Error = super::client::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(wait) = &mut this.wait {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.wait = None;
        }
        let mut data = match this.pending.take() {
            Some(data) => data,
            None => match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            },
        };
        let piece = (this.bytes_per_sec / 10).max(1) as usize;
        if data.len() > piece {
            this.pending = Some(data.split_off(piece));
        }
        let started = *this.started.get_or_insert_with(tokio::time::Instant::now);
        this.sent += data.len() as u64;
        // The next piece waits until the bytes sent so far are due at the rate.
        let due = started + Duration::from_secs_f64(this.sent as f64 / this.bytes_per_sec as f64);
        this.wait = Some(Box::pin(tokio::time::sleep_until(due)));
        Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }
}

/// A fault filter with its conditions compiled.
#[derive(Debug)]
pub struct FaultFilter {
    pub config: FaultInjection,
    headers: Vec<HeaderMatcher>,
    /// (URI SAN, SNI) alternatives; empty: every caller.
    callers: Vec<(Option<StringMatcher>, Option<StringMatcher>)>,
}

impl FaultFilter {
    pub fn compile(config: &FaultInjection) -> Result<FaultFilter, PatternError> {
        let optional = |m: &Option<_>| m.as_ref().map(StringMatcher::compile).transpose();
        Ok(FaultFilter {
            config: config.clone(),
            headers: config
                .headers
                .iter()
                .map(HeaderMatcher::compile)
                .collect::<Result<_, _>>()?,
            callers: config
                .callers
                .iter()
                .map(|c| Ok((optional(&c.uri_san)?, optional(&c.sni)?)))
                .collect::<Result<_, PatternError>>()?,
        })
    }

    /// Whether the fault applies to this request: every header matcher holds, and the caller
    /// matches one of the alternatives when there are any (as Envoy's SkipFilter wrapper: a
    /// caller without a certificate or SNI does not match a part that names one).
    pub fn applies(&self, parts: &Parts, ctx: &ConnContext) -> bool {
        self.headers.iter().all(|h| h.matches(parts))
            && (self.callers.is_empty()
                || self.callers.iter().any(|(san, sni)| {
                    san.as_ref()
                        .is_none_or(|m| ctx.identity.uri_sans.iter().any(|s| m.matches(s)))
                        && sni
                            .as_ref()
                            .is_none_or(|m| ctx.sni.as_deref().is_some_and(|s| m.matches(s)))
                }))
    }
}

/// A token bucket: `max_tokens`, plus `tokens_per_fill` every `fill_interval`.
#[derive(Debug)]
pub struct TokenBucket {
    config: LocalRateLimit,
    /// Packed state: tokens (high 32 bits) and the fill interval index last credited (low 32).
    state: AtomicU64,
    origin_ms: u64,
}

impl TokenBucket {
    pub fn new(config: &LocalRateLimit) -> TokenBucket {
        TokenBucket {
            config: config.clone(),
            state: AtomicU64::new((config.max_tokens as u64) << 32),
            origin_ms: now_ms(),
        }
    }

    fn interval_ms(&self) -> u64 {
        (self.config.fill_interval.as_millis() as u64).max(1)
    }

    /// Takes one token; `false` when the bucket is empty (the request gets `status()`).
    pub fn try_acquire(&self) -> bool {
        let tick = ((now_ms() - self.origin_ms) / self.interval_ms()) as u32;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (tokens, last_tick) = ((current >> 32) as u32, current as u32);
            let fills = tick.saturating_sub(last_tick) as u64;
            let refilled = (tokens as u64 + fills * self.config.tokens_per_fill as u64)
                .min(self.config.max_tokens as u64);
            if refilled == 0 {
                return false;
            }
            let next = ((refilled - 1) << 32) | tick.max(last_tick) as u64;
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    pub fn status(&self) -> u16 {
        if self.config.status == 0 {
            429
        } else {
            self.config.status
        }
    }
}

/// What fault injection decided for one request.
#[derive(Debug, Default, PartialEq)]
pub struct Faults {
    pub delay: Option<Duration>,
    pub abort: Option<u16>,
    /// Throttle the response to this many KiB/s.
    pub bandwidth_kbps: Option<u64>,
}

fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::thread_rng().gen_range(0.0..100.0) < percent)
}

pub fn decide(fault: &FaultInjection) -> Faults {
    Faults {
        delay: fault
            .delay
            .as_ref()
            .filter(|d| roll(d.percent))
            .map(|d| d.delay),
        abort: fault
            .abort
            .as_ref()
            .filter(|a| roll(a.percent))
            .map(|a| a.status),
        bandwidth_kbps: fault
            .response_bandwidth
            .as_ref()
            .filter(|b| roll(b.percent))
            .map(|b| b.kbps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FaultAbort, FaultDelay};

    #[test]
    fn the_bucket_empties_and_refills_per_interval() {
        let bucket = TokenBucket::new(&LocalRateLimit {
            max_tokens: 3,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(3600),
            status: 0,
        });
        assert!(bucket.try_acquire() && bucket.try_acquire() && bucket.try_acquire());
        assert!(!bucket.try_acquire());
        assert_eq!(bucket.status(), 429);
    }

    #[test]
    fn fault_percentages() {
        let always = FaultInjection {
            abort: Some(FaultAbort {
                status: 503,
                percent: 100.0,
            }),
            delay: Some(FaultDelay {
                delay: Duration::from_millis(5),
                percent: 0.0,
            }),
            ..FaultInjection::default()
        };
        assert_eq!(
            decide(&always),
            Faults {
                delay: None,
                abort: Some(503),
                bandwidth_kbps: None,
            }
        );
        let half = FaultInjection {
            abort: Some(FaultAbort {
                status: 500,
                percent: 50.0,
            }),
            ..FaultInjection::default()
        };
        let aborted = (0..10_000)
            .filter(|_| decide(&half).abort.is_some())
            .count();
        assert!((4_500..5_500).contains(&aborted), "{aborted}");
    }

    #[test]
    fn a_fault_for_callers_applies_to_a_matching_certificate_or_sni_only() {
        use crate::config::{CallerMatch, ValueMatch};
        let filter = FaultFilter::compile(&FaultInjection {
            callers: vec![
                CallerMatch {
                    uri_san: Some(ValueMatch::Prefix("spiffe://default/web".into())),
                    sni: None,
                },
                CallerMatch {
                    uri_san: Some(ValueMatch::Exact("spiffe://default/api".into())),
                    sni: Some(ValueMatch::Exact("api.mesh".into())),
                },
            ],
            ..FaultInjection::default()
        })
        .unwrap();
        let parts = http::Request::new(()).into_parts().0;
        let ctx = |san: Option<&str>, sni: Option<&str>| ConnContext {
            listener: "l".into(),
            chain: "c".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            sni: sni.map(str::to_owned),
            identity: crate::tls::PeerIdentity {
                uri_sans: san.into_iter().map(str::to_owned).collect(),
            },
            tls_terminated: san.is_some(),
            alpn: None,
        };
        assert!(filter.applies(&parts, &ctx(Some("spiffe://default/web-v2"), None)));
        assert!(filter.applies(&parts, &ctx(Some("spiffe://default/api"), Some("api.mesh"))));
        assert!(!filter.applies(&parts, &ctx(Some("spiffe://default/api"), None)));
        assert!(!filter.applies(&parts, &ctx(None, Some("api.mesh"))));
        let everyone = FaultFilter::compile(&FaultInjection::default()).unwrap();
        assert!(everyone.applies(&parts, &ctx(None, None)));
    }
}
