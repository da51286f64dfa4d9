//! A fault-injecting TCP relay for the links between components: tests put it between a client
//! and the address it dials (a zone's ingress, the global's KDS port) and change the link's
//! [`Fault`] while traffic flows. Faults apply to new and established connections alike:
//!
//! - [`Fault::Blackhole`]: nothing moves in either direction. New connections are accepted (the
//!   kernel completes the handshake) but not connected onwards, so a TLS handshake stalls, and
//!   established ones stop forwarding; bytes are held, not lost, and flow again when the fault
//!   is lifted (as TCP retransmits after a partition heals).
//! - [`Fault::Reset`]: every established connection is aborted with a TCP RST on both sides and
//!   every new one is reset as soon as it is accepted.
//! - [`Fault::Degrade`]: latency with jitter, loss and a bandwidth cap. TCP never loses bytes, so
//!   a lost segment shows as its retransmission: each chunk is lost with the given probability
//!   and then arrives [`RETRANSMIT_DELAY`] late (Linux's minimum RTO), holding back what follows.
//!
//! Jitter and loss draw from a seeded generator ([`FaultRelay::seed`]) so a run can be replayed.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// How late a "lost" chunk arrives: the retransmission after Linux's minimum RTO.
pub const RETRANSMIT_DELAY: Duration = Duration::from_millis(200);

/// Chunks read per direction before reading pauses while they wait for their delivery time.
const MAX_QUEUED_CHUNKS: usize = 64;

/// The state of a link.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Fault {
    /// Bytes pass as they come.
    #[default]
    Pass,
    /// Nothing passes; held bytes flow again when the fault is lifted.
    Blackhole,
    /// Connections are aborted (RST), established and new.
    Reset,
    /// A slow, lossy or narrow link.
    Degrade(Degradation),
}

/// Latency, jitter, loss and a bandwidth cap, each optional (zero means none).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Degradation {
    /// Added to every chunk, each direction.
    pub latency: Duration,
    /// Each chunk gets an extra uniform delay in `[0, jitter]` (order is kept).
    pub jitter: Duration,
    /// Share of chunks lost and retransmitted [`RETRANSMIT_DELAY`] later, 0.0 to 100.0.
    pub loss_percent: f64,
    /// Bytes per second per direction per connection; `None` for no cap.
    pub bytes_per_second: Option<u64>,
}

impl Degradation {
    /// How long a chunk read now waits before it is written.
    fn delay(&self, rng: &mut StdRng) -> Duration {
        let mut delay = self.latency;
        if !self.jitter.is_zero() {
            delay += self.jitter.mul_f64(rng.gen::<f64>());
        }
        if self.loss_percent > 0.0 && rng.gen::<f64>() * 100.0 < self.loss_percent {
            delay += RETRANSMIT_DELAY;
        }
        delay
    }
}

/// The text form of a fault (the relay's control port, `fault-relay`): `pass`, `blackhole`,
/// `reset`, or `degrade` followed by any of `latency=DUR`, `jitter=DUR` (DUR as `300ms` or `2s`),
/// `loss=PERCENT` and `rate=BYTES_PER_SECOND`.
impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Pass => write!(f, "pass"),
            Fault::Blackhole => write!(f, "blackhole"),
            Fault::Reset => write!(f, "reset"),
            Fault::Degrade(d) => {
                write!(
                    f,
                    "degrade latency={}ms jitter={}ms loss={}",
                    d.latency.as_millis(),
                    d.jitter.as_millis(),
                    d.loss_percent
                )?;
                if let Some(rate) = d.bytes_per_second {
                    write!(f, " rate={rate}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Fault, String> {
        let mut words = text.split_whitespace();
        let fault = match words.next() {
            Some("pass") => Fault::Pass,
            Some("blackhole") => Fault::Blackhole,
            Some("reset") => Fault::Reset,
            Some("degrade") => {
                let mut d = Degradation::default();
                for word in words.by_ref() {
                    let (key, value) = word
                        .split_once('=')
                        .ok_or_else(|| format!("fault {text:?}: {word:?} is not KEY=VALUE"))?;
                    let bad = || format!("fault {text:?}: bad {key} {value:?}");
                    match key {
                        "latency" => d.latency = parse_duration(value).ok_or_else(bad)?,
                        "jitter" => d.jitter = parse_duration(value).ok_or_else(bad)?,
                        "loss" => {
                            d.loss_percent = value
                                .parse::<f64>()
                                .ok()
                                .filter(|p| (0.0..=100.0).contains(p))
                                .ok_or_else(bad)?
                        }
                        "rate" => {
                            d.bytes_per_second = Some(
                                value
                                    .parse::<u64>()
                                    .ok()
                                    .filter(|r| *r > 0)
                                    .ok_or_else(bad)?,
                            )
                        }
                        _ => {
                            return Err(format!(
                                "fault {text:?}: unknown {key:?} (latency, jitter, loss, rate)"
                            ))
                        }
                    }
                }
                Fault::Degrade(d)
            }
            _ => {
                return Err(format!(
                    "fault {text:?}: expected pass, blackhole, reset or degrade KEY=VALUE..."
                ))
            }
        };
        match words.next() {
            Some(extra) => Err(format!("fault {text:?}: unexpected {extra:?}")),
            None => Ok(fault),
        }
    }
}

/// `300ms` or `2s` (whole numbers).
fn parse_duration(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    text.strip_suffix('s')?
        .parse()
        .ok()
        .map(Duration::from_secs)
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    bytes: AtomicU64,
}

/// A relay listening on a loopback port and forwarding to `target`. Dropping it closes every
/// connection through it.
#[derive(Debug)]
pub struct FaultRelay {
    addr: SocketAddr,
    target: SocketAddr,
    seed: u64,
    fault: watch::Sender<Fault>,
    counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    /// Relays a new loopback port to `target`, with a random seed.
    pub async fn start(target: SocketAddr) -> io::Result<FaultRelay> {
        FaultRelay::start_with_seed(target, rand::random()).await
    }

    /// Relays a new loopback port to `target`; jitter and loss draw from `seed`.
    pub async fn start_with_seed(target: SocketAddr, seed: u64) -> io::Result<FaultRelay> {
        let listener = TcpListener::bind((target.ip(), 0)).await?;
        Ok(FaultRelay::serve(listener, target, seed))
    }

    /// Relays connections accepted on `listener` to `target`.
    pub fn serve(listener: TcpListener, target: SocketAddr, seed: u64) -> FaultRelay {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (fault, faults) = watch::channel(Fault::Pass);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            seed,
            faults,
            counters.clone(),
        ));
        FaultRelay {
            addr,
            target,
            seed,
            fault,
            counters,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the relay forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The seed jitter and loss draw from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Changes the link's state, for established and new connections.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The link's current state.
    pub fn fault(&self) -> Fault {
        self.fault.borrow().clone()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// Bytes forwarded, both directions.
    pub fn bytes(&self) -> u64 {
        self.counters.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        // Connection tasks end when the fault channel closes.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    seed: u64,
    faults: watch::Receiver<Fault>,
    counters: Arc<Counters>,
) {
    let mut index = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: try again rather than end the link.
            tokio::task::yield_now().await;
            continue;
        };
        index += 1;
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        // Each connection its own stream of draws, so one connection's traffic does not shift
        // another's.
        let rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let counters = counters.clone();
        tokio::spawn(relay_connection(
            stream,
            target,
            faults.clone(),
            rng,
            counters,
        ));
    }
}

async fn relay_connection(
    mut downstream: TcpStream,
    target: SocketAddr,
    mut faults: watch::Receiver<Fault>,
    rng: StdRng,
    counters: Arc<Counters>,
) {
    counters.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&counters);
    // A blackholed link: the connection waits, unanswered, for the link to come back.
    let Ok(fault) = faults
        .wait_for(|f| !matches!(f, Fault::Blackhole))
        .await
        .map(|f| f.clone())
    else {
        return;
    };
    if fault == Fault::Reset {
        abort(&downstream);
        return;
    }
    let mut upstream = match TcpStream::connect(target).await {
        Ok(upstream) => upstream,
        Err(_) => {
            // The target refused: so does the relay.
            abort(&downstream);
            return;
        }
    };
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let reset = {
        let mut faults = faults.clone();
        async move {
            // Also when the relay is dropped (the channel closes).
            let _ = faults.wait_for(|f| *f == Fault::Reset).await;
        }
    };
    let aborted = {
        let (down_read, down_write) = downstream.split();
        let (up_read, up_write) = upstream.split();
        let mut forward_rng = rng.clone();
        let mut backward_rng = StdRng::seed_from_u64(rng.clone().gen());
        let pumps = async {
            let _ = tokio::join!(
                pump(
                    down_read,
                    up_write,
                    faults.clone(),
                    &mut forward_rng,
                    &counters.bytes
                ),
                pump(
                    up_read,
                    down_write,
                    faults.clone(),
                    &mut backward_rng,
                    &counters.bytes
                ),
            );
        };
        tokio::select! {
            _ = pumps => false,
            _ = reset => true,
        }
    };
    // The pumps also stop on a reset, and may be seen first.
    if aborted || *faults.borrow() == Fault::Reset {
        abort(&downstream);
        abort(&upstream);
    }
}

struct ActiveGuard<'a>(&'a Counters);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes closing `stream` send a RST instead of a FIN.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Copies `from` to `to` under the link's faults until `from` ends (then shuts `to` down) or the
/// relay is dropped.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut faults: watch::Receiver<Fault>,
    rng: &mut StdRng,
    bytes: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    // Chunks read but not yet due, with the time each is due.
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut last_due = Instant::now();
    let mut paced_until = Instant::now();
    let mut eof = false;
    loop {
        let fault = faults.borrow_and_update().clone();
        match &fault {
            Fault::Blackhole => {
                if faults.changed().await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Fault::Reset => return Ok(()),
            _ => {}
        }
        if eof && queue.is_empty() {
            return to.shutdown().await;
        }
        let next_write = queue.front().map(|(due, _)| (*due).max(paced_until));
        tokio::select! {
            read = from.read(&mut buf), if !eof && queue.len() < MAX_QUEUED_CHUNKS => {
                let n = read?;
                if n == 0 {
                    eof = true;
                    continue;
                }
                match &fault {
                    Fault::Degrade(degradation) => {
                        // Never before an earlier chunk: TCP delivers in order.
                        let due = (Instant::now() + degradation.delay(rng)).max(last_due);
                        last_due = due;
                        queue.push_back((due, buf[..n].to_vec()));
                    }
                    _ if queue.is_empty() => {
                        to.write_all(&buf[..n]).await?;
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    // Lifted degradation: what was queued still goes first.
                    _ => queue.push_back((Instant::now(), buf[..n].to_vec())),
                }
            }
            _ = sleep_until_some(next_write) => {
                let (_, chunk) = queue.pop_front().expect("a queued chunk is due");
                to.write_all(&chunk).await?;
                bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if let Fault::Degrade(Degradation { bytes_per_second: Some(rate), .. }) = &fault {
                    let rate = (*rate).max(1);
                    paced_until = Instant::now()
                        + Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                }
            }
            changed = faults.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An echo server on loopback.
    pub(crate) async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    const SHORT: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn faults_round_trip_through_their_text_and_bad_text_is_named() {
        let slow = Fault::Degrade(Degradation {
            latency: Duration::from_millis(300),
            jitter: Duration::from_millis(20),
            loss_percent: 5.0,
            bytes_per_second: Some(1000),
        });
        for fault in [Fault::Pass, Fault::Blackhole, Fault::Reset, slow.clone()] {
            assert_eq!(fault.to_string().parse::<Fault>(), Ok(fault));
        }
        assert_eq!(
            "degrade latency=300ms jitter=20ms loss=5 rate=1000".parse::<Fault>(),
            Ok(slow)
        );
        assert_eq!(
            "degrade latency=2s".parse::<Fault>().map(|f| f.to_string()),
            Ok("degrade latency=2000ms jitter=0ms loss=0".to_string())
        );
        for bad in [
            "",
            "slow",
            "pass now",
            "degrade loss=500",
            "degrade latency=3",
            "degrade x=1",
        ] {
            let error = bad.parse::<Fault>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn passes_bytes_both_ways() {
        let relay = FaultRelay::start(echo().await).await.unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await.unwrap(), b"hello");
        assert_eq!(relay.accepted(), 1);
        assert_eq!(relay.bytes(), 10);
    }

    #[tokio::test]
    async fn a_blackhole_holds_bytes_until_it_is_lifted() {
        let relay = FaultRelay::start(echo().await).await.unwrap();
        let mut established = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut established, b"a").await.unwrap(), b"a");
        relay.set(Fault::Blackhole);
        let mut fresh = TcpStream::connect(relay.addr()).await.unwrap();
        for stream in [&mut established, &mut fresh] {
            let stalled = tokio::time::timeout(SHORT, round_trip(stream, b"held")).await;
            assert!(stalled.is_err(), "bytes crossed a blackholed link");
        }
        relay.set(Fault::Pass);
        for stream in [&mut established, &mut fresh] {
            // The held request arrives, and its echo; then the link works as before.
            let mut back = [0u8; 4];
            tokio::time::timeout(LONG, stream.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&back, b"held");
            assert_eq!(round_trip(stream, b"again").await.unwrap(), b"again");
        }
    }

    #[tokio::test]
    async fn a_reset_aborts_established_and_new_connections() {
        let relay = FaultRelay::start(echo().await).await.unwrap();
        let mut established = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut established, b"a").await.unwrap(), b"a");
        relay.set(Fault::Reset);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(LONG, established.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        let mut fresh = TcpStream::connect(relay.addr()).await.unwrap();
        let outcome = tokio::time::timeout(LONG, round_trip(&mut fresh, b"b"))
            .await
            .unwrap();
        assert!(outcome.is_err(), "a new connection crossed a reset link");
        relay.set(Fault::Pass);
        let mut healed = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut healed, b"c").await.unwrap(), b"c");
    }

    #[tokio::test]
    async fn degradation_delays_each_direction_and_keeps_order() {
        let relay = FaultRelay::start_with_seed(echo().await, 7).await.unwrap();
        relay.set(Fault::Degrade(Degradation {
            latency: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
            ..Degradation::default()
        }));
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let started = std::time::Instant::now();
        let message: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let echoed = tokio::time::timeout(LONG, round_trip(&mut stream, &message))
            .await
            .unwrap()
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(echoed, message, "bytes arrived out of order or altered");
        // At least the latency once each way.
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    }

    #[tokio::test]
    async fn loss_shows_as_retransmission_delay() {
        let relay = FaultRelay::start_with_seed(echo().await, 11).await.unwrap();
        relay.set(Fault::Degrade(Degradation {
            loss_percent: 100.0,
            ..Degradation::default()
        }));
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            tokio::time::timeout(LONG, round_trip(&mut stream, b"x"))
                .await
                .unwrap()
                .unwrap(),
            b"x"
        );
        assert!(started.elapsed() >= RETRANSMIT_DELAY * 2);
    }

    #[tokio::test]
    async fn bandwidth_is_capped() {
        let relay = FaultRelay::start(echo().await).await.unwrap();
        relay.set(Fault::Degrade(Degradation {
            bytes_per_second: Some(200_000),
            ..Degradation::default()
        }));
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        let started = std::time::Instant::now();
        let message = vec![7u8; 100_000];
        tokio::time::timeout(LONG, round_trip(&mut stream, &message))
            .await
            .unwrap()
            .unwrap();
        // 100 kB each way at 200 kB/s, pipelined: at least about half a second.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn dropping_the_relay_closes_its_connections() {
        let relay = FaultRelay::start(echo().await).await.unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"a").await.unwrap(), b"a");
        drop(relay);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(LONG, stream.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
