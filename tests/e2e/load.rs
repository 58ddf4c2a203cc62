//! A paced load generator: steady GET traffic from this machine to a node's nginx, every
//! request recorded (send and receive time, status or transport error, answering version).
//!
//! Requests go out at a fixed rate, one every `1/rate` seconds, from a pool of worker threads
//! sharing one `ureq` agent. Every `slow_every`-th request is `/sleep?ms=<slow_ms>` instead.
//!
//! Each request is made exactly once, on a connection of its own (see [`agent`]): a reset,
//! an EOF or a timeout is recorded as a transport error and never hidden by a retry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::harness;

/// How a load runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests per second, evenly spaced.
    pub rate: u32,
    /// Every n-th request is a slow one (0: none).
    pub slow_every: u64,
    /// How long the app holds a slow request, in milliseconds.
    pub slow_ms: u64,
    /// The path of the fast requests.
    pub path: String,
    /// Every n-th request (of those not slow) is a `POST /events` that inserts one event
    /// (0: none).
    pub write_every: u64,
    /// The load stops by itself after this long, even if `stop` is never called.
    pub max_duration: Duration,
    /// Worker threads (the most requests in flight at once).
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate: 200,
            slow_every: 0,
            slow_ms: 3000,
            path: "/version".into(),
            write_every: 0,
            max_duration: Duration::from_secs(600),
            workers: 96,
        }
    }
}

/// What answered a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status (the body was read in full).
    Status(u16),
    /// No complete response: reset, EOF, timeout, refused, ...
    Transport {
        /// What went wrong, in one word: see [`kind_of`].
        kind: String,
        /// The client's message.
        detail: String,
    },
}

impl Outcome {
    fn transport(kind: String, detail: String) -> Outcome {
        Outcome::Transport { kind, detail }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the pacer scheduled it.
    pub due: Instant,
    pub sent: Instant,
    pub received: Instant,
    pub slow: bool,
    /// A `POST /events` rather than a GET.
    pub write: bool,
    pub outcome: Outcome,
    /// The `X-App-Version` header of the response, if any.
    pub version: Option<String>,
}

impl Sample {
    pub fn latency(&self) -> Duration {
        self.received - self.sent
    }

    /// A 5xx or a transport error.
    pub fn is_failure(&self) -> bool {
        match self.outcome {
            Outcome::Status(code) => code >= 500,
            Outcome::Transport { .. } => true,
        }
    }
}

/// A running load; `stop` ends it and returns what it recorded.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    pacer: JoinHandle<bool>,
    workers: Vec<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

/// A request a worker has to make.
struct Job {
    due: Instant,
    slow: bool,
    write: bool,
}

impl Load {
    /// Starts sending to `url_base` (`http://<harness node or 127.0.0.1>:<port>`).
    pub fn start(url_base: &str, options: Options) -> Load {
        check_target(url_base);
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let agent = agent();

        let workers = (0..options.workers)
            .map(|_| {
                let worker = Worker {
                    agent: agent.clone(),
                    base: url_base.trim_end_matches('/').to_string(),
                    options: options.clone(),
                    samples: samples.clone(),
                };
                let queue = queue.clone();
                std::thread::spawn(move || worker.run(&queue))
            })
            .collect();
        let pacer = {
            let (stop, options) = (stop.clone(), options.clone());
            std::thread::spawn(move || pace(started, &options, &stop, jobs))
        };
        Load {
            started,
            stop,
            pacer,
            workers,
            samples,
        }
    }

    /// Stops sending, waits for the requests in flight, and returns every sample.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let hit_deadline = self.pacer.join().expect("the pacer thread ran");
        for worker in self.workers {
            worker.join().expect("a load worker thread ran");
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap());
        samples.sort_by_key(|s| s.sent);
        Report {
            started: self.started,
            samples,
            hit_deadline,
        }
    }
}

/// The HTTP client of the load: one fresh connection per request, no idle pool.
///
/// ureq 2 has no switch to turn retries off, and it silently sends a GET a second time when
/// a connection taken from its idle pool turns out to be closed (ureq's `unit.rs`, the
/// `is_recycled` retry). A graceful nginx reload closes exactly such connections, so a pooled
/// agent would turn the resets and EOFs of a bad switch into quiet successes. With no idle
/// pool (`max_idle_connections(0)`) no connection is ever reused, ureq never retries, and
/// every failure reaches the report. At 200 requests per second this leaves about 12,000
/// sockets in TIME_WAIT on this machine, well inside its ephemeral port range.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build()
}

/// Refuses any target but a harness node or this machine's loopback.
fn check_target(url_base: &str) {
    let host = url_base
        .strip_prefix("http://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    let allowed = host == "127.0.0.1" || harness().iter().any(|n| n.address == host);
    assert!(
        allowed,
        "load only targets harness nodes or 127.0.0.1, not {url_base}"
    );
}

/// Hands out jobs at a steady rate until stopped or `max_duration` is over; true if the
/// deadline ended it.
fn pace(started: Instant, options: &Options, stop: &AtomicBool, jobs: Sender<Job>) -> bool {
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
    let deadline = started + options.max_duration;
    let mut i = 0u64;
    loop {
        let due = started + interval.mul_f64(i as f64);
        if due >= deadline {
            return true;
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let slow = options.slow_every > 0 && i % options.slow_every == options.slow_every - 1;
        let write = !slow && options.write_every > 0 && i.is_multiple_of(options.write_every);
        if jobs.send(Job { due, slow, write }).is_err() {
            return false;
        }
        i += 1;
    }
}

/// A thread that makes requests from the queue until the pacer hangs up.
struct Worker {
    agent: ureq::Agent,
    base: String,
    options: Options,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Worker {
    fn run(&self, queue: &Mutex<Receiver<Job>>) {
        loop {
            let job = queue.lock().unwrap().recv();
            let Ok(job) = job else { return };
            let sample = self.request(&job);
            self.samples.lock().unwrap().push(sample);
        }
    }

    fn request(&self, job: &Job) -> Sample {
        let (path, timeout) = if job.slow {
            let ms = self.options.slow_ms;
            (
                format!("/sleep?ms={ms}"),
                Duration::from_millis(ms + 10_000),
            )
        } else {
            (self.options.path.clone(), Duration::from_secs(10))
        };
        let sent = Instant::now();
        let (outcome, version) = if job.write {
            let url = format!("{}/events", self.base);
            send(self.agent.post(&url).timeout(timeout), Some(&event_body()))
        } else {
            let url = format!("{}{path}", self.base);
            send(self.agent.get(&url).timeout(timeout), None)
        };
        Sample {
            due: job.due,
            sent,
            received: Instant::now(),
            slow: job.slow,
            write: job.write,
            outcome,
            version,
        }
    }
}

/// The JSON of one event to insert, varied by the clock.
fn event_body() -> String {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let n = f64::from(clock.subsec_nanos()) / 1e9;
    format!(
        r#"{{"name":"load event {n:.6}","lat":{lat:.4},"lon":{lon:.4},"embedding":[{n:.3},0.5,0.5]}}"#,
        lat = n * 90.0 - 45.0,
        lon = n * 180.0 - 90.0,
    )
}

/// Makes one request (with a JSON body, if any) and reads the answer's body in full.
fn send(request: ureq::Request, body: Option<&str>) -> (Outcome, Option<String>) {
    let answer = match body {
        Some(json) => request
            .set("Content-Type", "application/json")
            .send_string(json),
        None => request.call(),
    };
    let response = match answer {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(e)) => {
            return (Outcome::transport(kind_of(&e), e.to_string()), None)
        }
    };
    let status = response.status();
    let version = response.header("X-App-Version").map(str::to_string);
    match response.into_string() {
        Ok(_) => (Outcome::Status(status), version),
        Err(e) => (
            Outcome::transport(
                kind_of(&e),
                format!("HTTP {status}, then reading the body: {e}"),
            ),
            version,
        ),
    }
}

/// The kind of a transport error, from the first I/O error in its chain: `reset`, `eof`,
/// `timeout`, `refused`, `aborted`, `broken-pipe`, or else the client's own error kind.
fn kind_of(error: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind;

    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::ConnectionReset => "reset".into(),
                ErrorKind::UnexpectedEof => "eof".into(),
                ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
                ErrorKind::ConnectionRefused => "refused".into(),
                ErrorKind::ConnectionAborted => "aborted".into(),
                ErrorKind::BrokenPipe => "broken-pipe".into(),
                other => format!("io-{other:?}").to_lowercase(),
            };
        }
        cause = e.source();
    }
    match error.downcast_ref::<ureq::Transport>() {
        Some(t) => format!("{:?}", t.kind()).to_lowercase(),
        None => "other".into(),
    }
}

/// Latency figures of a set of requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.count,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Everything a load recorded, ordered by send time.
pub struct Report {
    pub started: Instant,
    pub samples: Vec<Sample>,
    /// The load stopped by itself at `max_duration`, before `stop` was called.
    pub hit_deadline: bool,
}

impl Report {
    pub fn count(&self) -> usize {
        self.samples.len()
    }

    /// The requests sent in `[from, to)`, as a report of their own.
    pub fn between(&self, from: Instant, to: Instant) -> Report {
        self.within(&[(from, to)])
    }

    /// The requests sent inside any of `spans` (each `[from, to)`).
    pub fn within(&self, spans: &[(Instant, Instant)]) -> Report {
        Report {
            started: self.started,
            samples: self
                .samples
                .iter()
                .filter(|s| {
                    spans
                        .iter()
                        .any(|&(from, to)| s.sent >= from && s.sent < to)
                })
                .cloned()
                .collect(),
            hit_deadline: self.hit_deadline,
        }
    }

    /// 5xx answers and transport errors.
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.is_failure()).collect()
    }

    /// Everything that was not a 200.
    pub fn not_ok(&self) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.outcome != Outcome::Status(200))
            .collect()
    }

    /// Latency of the fast (`slow == false`) or the slow requests that got a response.
    pub fn latency(&self, slow: bool) -> Latency {
        let mut times: Vec<Duration> = self
            .samples
            .iter()
            .filter(|s| s.slow == slow && matches!(s.outcome, Outcome::Status(_)))
            .map(Sample::latency)
            .collect();
        times.sort();
        let rank = |p: usize| times[(times.len() * p).div_ceil(100).max(1) - 1];
        match times.last() {
            None => Latency::default(),
            Some(&max) => Latency {
                count: times.len(),
                p50: rank(50),
                p99: rank(99),
                max,
            },
        }
    }

    /// The longest a request waited for a free worker (large means the load lagged).
    pub fn max_queue_delay(&self) -> Duration {
        self.samples
            .iter()
            .map(|s| s.sent.saturating_duration_since(s.due))
            .max()
            .unwrap_or_default()
    }

    /// How many requests sent at or after `instant` each version answered (`"-"`: none).
    pub fn versions_after(&self, instant: Instant) -> BTreeMap<String, usize> {
        let mut versions = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.sent >= instant) {
            let version = s.version.clone().unwrap_or_else(|| "-".into());
            *versions.entry(version).or_default() += 1;
        }
        versions
    }

    /// The first request sent at or after `instant` that `version` answered.
    pub fn first_answer_from(&self, version: &str, instant: Instant) -> Option<&Sample> {
        self.samples
            .iter()
            .find(|s| s.sent >= instant && s.version.as_deref() == Some(version))
    }

    /// One line for a request: when it left (seconds since the load started), what it was,
    /// what came back, and after how long.
    pub fn describe(&self, s: &Sample) -> String {
        let outcome = match &s.outcome {
            Outcome::Status(code) => format!("HTTP {code}"),
            Outcome::Transport { kind, detail } => format!("transport error ({kind}): {detail}"),
        };
        format!(
            "+{:.3}s {} -> {outcome} after {:.0} ms (version {})",
            (s.sent - self.started).as_secs_f64(),
            match (s.slow, s.write) {
                (true, _) => "slow",
                (_, true) => "write",
                _ => "fast",
            },
            ms(s.latency()),
            s.version.as_deref().unwrap_or("-"),
        )
    }

    /// Every failure, one per line.
    pub fn describe_failures(&self) -> String {
        let lines: Vec<String> = self
            .failures()
            .into_iter()
            .map(|s| self.describe(s))
            .collect();
        lines.join("\n")
    }

    /// Failure causes with their counts, e.g. `HTTP 502 x12`.
    pub fn failure_causes(&self) -> BTreeMap<String, usize> {
        let mut causes = BTreeMap::new();
        for s in self.failures() {
            let cause = match &s.outcome {
                Outcome::Status(code) => format!("HTTP {code}"),
                Outcome::Transport { kind, detail } => format!("{kind}: {detail}"),
            };
            *causes.entry(cause).or_default() += 1;
        }
        causes
    }
}
