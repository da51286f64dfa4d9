//! What the client measured: `Tally` accumulates outcomes (a latency histogram and counters,
//! no allocation per request once a zone or instance has been seen), `Report` is one period's or
//! the whole run's summary, printable as text or one JSON line.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use hdrhistogram::Histogram;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Whether a report covers one period of the run or all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    Period,
    Final,
}

/// A summary of requests. `scheduled = sent + failures.not_sent`; `ok + failed` counts the
/// requests that completed in the span (a period's may include requests sent in the one before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub kind: ReportKind,
    /// Seconds from the start of the run to the end of this report's span.
    pub at_secs: f64,
    /// Length of the span this report covers.
    pub elapsed_secs: f64,
    /// Requests due by the schedule in the span.
    pub scheduled: u64,
    /// Requests actually started.
    pub sent: u64,
    /// Requests started per second: over the period for a period; for the final report over the
    /// sending window (`scheduled / rate`, or up to the last send if the client fell behind),
    /// which leaves out the wait for the last answers.
    pub sent_per_sec: f64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Every other outcome, by kind in `failures`.
    pub failed: u64,
    pub failures: Failures,
    /// `ok / (ok + failed)`; absent when nothing completed.
    pub success_rate: Option<f64>,
    /// Latency of the requests that got an answer (any status), from sending to the last byte of
    /// the body; absent when none did.
    pub latency: Option<Latency>,
    /// Answers (any status) by the `zone`, `instance` and `version` of their JSON body; bodies
    /// that are not the demo service's identity are not counted here.
    pub zones: BTreeMap<String, u64>,
    pub instances: BTreeMap<String, u64>,
    pub versions: BTreeMap<String, u64>,
}

/// Failed requests by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Answers with a status other than 2xx, by status code.
    pub status: BTreeMap<u16, u64>,
    /// The TCP connection could not be made (refused, unreachable).
    pub connect: u64,
    /// No complete answer within the request timeout (connecting included).
    pub timeout: u64,
    /// The connection broke or the answer was not valid HTTP.
    pub io: u64,
    /// Due by the schedule while the in-flight limit (`--concurrency`) was reached, so not sent:
    /// counted rather than queued, so the schedule stays honest.
    pub not_sent: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// How one sent request ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Answer {
        status: StatusCode,
        latency: Duration,
        body: bytes::Bytes,
    },
    Connect,
    Timeout,
    Io,
}

/// Latencies are recorded in microseconds, up to an hour, to 3 significant digits.
const LATENCY_MAX_MICROS: u64 = 3_600_000_000;

/// Bodies larger than this are not parsed for an identity (the demo's is under 200 bytes).
const IDENTITY_MAX_BYTES: usize = 16 * 1024;

/// Outcomes accumulated over a span.
#[derive(Debug)]
pub(crate) struct Tally {
    scheduled: u64,
    sent: u64,
    ok: u64,
    failures: Failures,
    latency: Histogram<u64>,
    zones: BTreeMap<String, u64>,
    instances: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
}

/// The parts of a demo service's answer the client counts by.
#[derive(Deserialize)]
struct AnswerIdentity<'a> {
    #[serde(borrow)]
    zone: Option<Cow<'a, str>>,
    #[serde(borrow)]
    instance: Option<Cow<'a, str>>,
    #[serde(borrow)]
    version: Option<Cow<'a, str>>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            scheduled: 0,
            sent: 0,
            ok: 0,
            failures: Failures::default(),
            latency: Histogram::new_with_max(LATENCY_MAX_MICROS, 3)
                .expect("constant histogram bounds are valid"),
            zones: BTreeMap::new(),
            instances: BTreeMap::new(),
            versions: BTreeMap::new(),
        }
    }

    pub(crate) fn sent(&mut self) {
        self.scheduled += 1;
        self.sent += 1;
    }

    pub(crate) fn not_sent(&mut self) {
        self.scheduled += 1;
        self.failures.not_sent += 1;
    }

    pub(crate) fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Answer {
                status,
                latency,
                body,
            } => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros.max(1));
                if status.is_success() {
                    self.ok += 1;
                } else {
                    *self.failures.status.entry(status.as_u16()).or_insert(0) += 1;
                }
                self.count_identity(body);
            }
            Outcome::Connect => self.failures.connect += 1,
            Outcome::Timeout => self.failures.timeout += 1,
            Outcome::Io => self.failures.io += 1,
        }
    }

    fn count_identity(&mut self, body: &[u8]) {
        if body.is_empty() || body.len() > IDENTITY_MAX_BYTES || body[0] != b'{' {
            return;
        }
        let Ok(identity) = serde_json::from_slice::<AnswerIdentity>(body) else {
            return;
        };
        count(&mut self.zones, identity.zone.as_deref());
        count(&mut self.instances, identity.instance.as_deref());
        count(&mut self.versions, identity.version.as_deref());
    }

    fn failed(&self) -> u64 {
        let failures = &self.failures;
        failures.status.values().sum::<u64>()
            + failures.connect
            + failures.timeout
            + failures.io
            + failures.not_sent
    }

    /// Adds `other`'s counts to this one's (a period into the whole run).
    pub(crate) fn absorb(&mut self, other: &Tally) {
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.ok += other.ok;
        for (code, n) in &other.failures.status {
            *self.failures.status.entry(*code).or_insert(0) += n;
        }
        self.failures.connect += other.failures.connect;
        self.failures.timeout += other.failures.timeout;
        self.failures.io += other.failures.io;
        self.failures.not_sent += other.failures.not_sent;
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds add");
        for (mine, theirs) in [
            (&mut self.zones, &other.zones),
            (&mut self.instances, &other.instances),
            (&mut self.versions, &other.versions),
        ] {
            for (key, n) in theirs {
                *mine.entry(key.clone()).or_insert(0) += n;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.scheduled = 0;
        self.sent = 0;
        self.ok = 0;
        self.failures = Failures::default();
        self.latency.reset();
        self.zones.clear();
        self.instances.clear();
        self.versions.clear();
    }

    pub(crate) fn report(&self, kind: ReportKind, at: Duration, elapsed: Duration) -> Report {
        let failed = self.failed();
        let elapsed_secs = elapsed.as_secs_f64();
        let latency = (!self.latency.is_empty()).then(|| {
            let ms = |micros: u64| micros as f64 / 1000.0;
            Latency {
                count: self.latency.len(),
                p50_ms: ms(self.latency.value_at_quantile(0.50)),
                p90_ms: ms(self.latency.value_at_quantile(0.90)),
                p99_ms: ms(self.latency.value_at_quantile(0.99)),
                max_ms: ms(self.latency.max()),
            }
        });
        Report {
            kind,
            at_secs: at.as_secs_f64(),
            elapsed_secs,
            scheduled: self.scheduled,
            sent: self.sent,
            sent_per_sec: if elapsed_secs > 0.0 {
                self.sent as f64 / elapsed_secs
            } else {
                0.0
            },
            ok: self.ok,
            failed,
            failures: self.failures.clone(),
            success_rate: (self.ok + failed > 0)
                .then(|| self.ok as f64 / (self.ok + failed) as f64),
            latency,
            zones: self.zones.clone(),
            instances: self.instances.clone(),
            versions: self.versions.clone(),
        }
    }
}

/// Counts `key` in `counts`, allocating its name only the first time it is seen.
fn count(counts: &mut BTreeMap<String, u64>, key: Option<&str>) {
    let Some(key) = key else { return };
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_owned(), 1);
        }
    }
}

impl Report {
    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a report is plain data")
    }

    /// A period as one line; the final report as a few.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = match self.kind {
            ReportKind::Period => self.write_period(&mut text),
            ReportKind::Final => self.write_final(&mut text),
        };
        text
    }

    fn write_period(&self, out: &mut String) -> fmt::Result {
        write!(
            out,
            "[{:>7.1}s] sent {} ({:.1}/s), ok {}, failed {}",
            self.at_secs, self.sent, self.sent_per_sec, self.ok, self.failed
        )?;
        if self.failed > 0 {
            write!(out, " ({})", self.failures)?;
        }
        if let Some(rate) = self.success_rate {
            write!(out, ", success {:.2}%", rate * 100.0)?;
        }
        if let Some(latency) = &self.latency {
            write!(
                out,
                ", p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                latency.p50_ms, latency.p99_ms, latency.max_ms
            )?;
        }
        if !self.zones.is_empty() {
            write!(out, ", zones {}", Counts(&self.zones))?;
        }
        Ok(())
    }

    fn write_final(&self, out: &mut String) -> fmt::Result {
        writeln!(
            out,
            "final after {:.2}s: scheduled {}, sent {} ({:.1}/s)",
            self.elapsed_secs, self.scheduled, self.sent, self.sent_per_sec
        )?;
        write!(out, "  ok {}, failed {}", self.ok, self.failed)?;
        if self.failed > 0 {
            write!(out, " ({})", self.failures)?;
        }
        writeln!(out)?;
        match self.success_rate {
            Some(rate) => writeln!(out, "  success rate {:.2}%", rate * 100.0)?,
            None => writeln!(out, "  success rate: nothing completed")?,
        }
        match &self.latency {
            Some(l) => writeln!(
                out,
                "  latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} answers)",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            )?,
            None => writeln!(out, "  latency: no answers")?,
        }
        for (name, counts) in [
            ("zones", &self.zones),
            ("instances", &self.instances),
            ("versions", &self.versions),
        ] {
            if !counts.is_empty() {
                writeln!(out, "  {name}: {}", Counts(counts))?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (code, n) in &self.status {
            parts.push(format!("status {code}: {n}"));
        }
        for (name, n) in [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("io", self.io),
            ("not sent", self.not_sent),
        ] {
            if n > 0 {
                parts.push(format!("{name}: {n}"));
            }
        }
        f.write_str(&parts.join(", "))
    }
}

/// `a=1 b=2`.
struct Counts<'a>(&'a BTreeMap<String, u64>);

impl fmt::Display for Counts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, n)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            write!(f, "{key}={n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, micros: u64, body: &'static str) -> Outcome {
        Outcome::Answer {
            status: StatusCode::from_u16(status).unwrap(),
            latency: Duration::from_micros(micros),
            body: bytes::Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn outcomes_are_counted_by_kind_zone_instance_and_version() {
        let mut tally = Tally::new();
        for _ in 0..6 {
            tally.sent();
        }
        tally.not_sent();
        tally.record(&answer(
            200,
            100,
            r#"{"service":"b","zone":"zone-2","instance":"b-1","version":"v1"}"#,
        ));
        tally.record(&answer(
            200,
            300,
            r#"{"service":"b","zone":"zone-3","instance":"b-2"}"#,
        ));
        tally.record(&answer(503, 200, r#"{"zone":"zone-2","instance":"b-1"}"#));
        tally.record(&answer(404, 200, "not json"));
        tally.record(&Outcome::Connect);
        tally.record(&Outcome::Timeout);
        let report = tally.report(
            ReportKind::Final,
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        assert_eq!((report.scheduled, report.sent, report.ok), (7, 6, 2));
        assert_eq!(report.sent_per_sec, 3.0);
        assert_eq!(report.failed, 5);
        assert_eq!(report.failures.status, BTreeMap::from([(404, 1), (503, 1)]));
        assert_eq!(
            (
                report.failures.connect,
                report.failures.timeout,
                report.failures.not_sent
            ),
            (1, 1, 1)
        );
        assert_eq!(report.success_rate, Some(2.0 / 7.0));
        assert_eq!(
            report.zones,
            BTreeMap::from([("zone-2".into(), 2), ("zone-3".into(), 1)])
        );
        assert_eq!(
            report.instances,
            BTreeMap::from([("b-1".into(), 2), ("b-2".into(), 1)])
        );
        assert_eq!(report.versions, BTreeMap::from([("v1".into(), 1)]));
        let latency = report.latency.unwrap();
        assert_eq!(latency.count, 4);
        assert_eq!(latency.max_ms, 0.3);
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut tally = Tally::new();
        for micros in 1..=1000 {
            tally.sent();
            tally.record(&answer(200, micros, ""));
        }
        let latency = tally
            .report(
                ReportKind::Final,
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .latency
            .unwrap();
        assert_eq!(latency.p50_ms, 0.5);
        assert_eq!(latency.p90_ms, 0.9);
        assert_eq!(latency.p99_ms, 0.99);
        assert_eq!(latency.max_ms, 1.0);
    }

    #[test]
    fn a_period_absorbed_into_the_run_keeps_every_count() {
        let mut run = Tally::new();
        let mut period = Tally::new();
        for zone in ["zone-1", "zone-2"] {
            period.sent();
            let body = format!(r#"{{"zone":"{zone}"}}"#);
            period.record(&Outcome::Answer {
                status: StatusCode::OK,
                latency: Duration::from_millis(1),
                body: body.into(),
            });
            run.absorb(&period);
            period.clear();
        }
        assert_eq!(
            period
                .report(ReportKind::Period, Duration::ZERO, Duration::ZERO)
                .sent,
            0
        );
        let report = run.report(
            ReportKind::Final,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!((report.sent, report.ok), (2, 2));
        assert_eq!(report.latency.unwrap().count, 2);
        assert_eq!(
            report.zones,
            BTreeMap::from([("zone-1".into(), 1), ("zone-2".into(), 1)])
        );
    }

    #[test]
    fn reports_print_as_text_and_round_trip_as_json() {
        let mut tally = Tally::new();
        tally.sent();
        tally.record(&answer(503, 1500, r#"{"zone":"zone-1"}"#));
        let report = tally.report(
            ReportKind::Period,
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        assert_eq!(
            report.to_text(),
            "[    3.0s] sent 1 (1.0/s), ok 0, failed 1 (status 503: 1), success 0.00%, \
             p50 1.500 ms, p99 1.500 ms, max 1.500 ms, zones zone-1=1"
        );
        let parsed: Report = serde_json::from_str(&report.to_json_line()).unwrap();
        assert_eq!(parsed, report);
        let text = Report {
            kind: ReportKind::Final,
            ..report
        }
        .to_text();
        assert!(
            text.starts_with("final after 1.00s: scheduled 1, sent 1 (1.0/s)\n"),
            "{text}"
        );
        assert!(text.contains("  success rate 0.00%\n"), "{text}");
    }
}
