//! Notifications: lifecycle events sent to the sinks of the inventory's `notify:` list.
//!
//! Each sink has a thread of its own that takes events from a queue in order, so a slow or
//! dead receiver delays only its own deliveries, never the deploy. A delivery that fails
//! is reported as a warning. At the end of the run the queues get a bounded time to drain;
//! whatever is still queued then is reported as not delivered and dropped.

mod config;
mod send;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub use config::{validate, Delivery, LogConfig, NtfyConfig, SinkConfig, WebhookConfig};
pub use send::{backoff, ntfy_parts, sign, Printer, Sink, SIGNATURE_HEADER};

use crate::config::{secrets_file, Environment};
use crate::error::Error;
use crate::event::Event;

/// How long the end of a run waits, at most, for every sink's queue to drain.
pub const FINAL_WAIT: Duration = Duration::from_secs(10);

/// The sinks of one run, each behind its own queue and thread.
pub struct Notifier {
    workers: Vec<Worker>,
    done: mpsc::Receiver<usize>,
    print: Printer,
}

struct Worker {
    name: String,
    config: SinkConfig,
    queue: Option<mpsc::Sender<Event>>,
    /// Events queued and not yet handled.
    pending: Arc<AtomicUsize>,
}

impl Notifier {
    /// Starts one thread per sink of `env`. A signing secret that the secrets file lacks is
    /// a configuration error, found before any node is touched.
    pub fn start(env: &Environment, print: Printer) -> Result<Notifier, Error> {
        let (done_tx, done) = mpsc::channel();
        let mut workers = Vec::new();
        for (index, config) in env.settings.notify.iter().enumerate() {
            let sink = prepare(env, config, print.clone())?;
            workers.push(Worker::spawn(index, sink, done_tx.clone()));
        }
        Ok(Notifier {
            workers,
            done,
            print,
        })
    }

    /// Queues `event` for every sink that takes it; never blocks.
    pub fn send(&self, event: &Event) {
        for worker in &self.workers {
            if !worker.config.wants(event.event) {
                continue;
            }
            if let Some(queue) = &worker.queue {
                worker.pending.fetch_add(1, Ordering::SeqCst);
                if queue.send(event.clone()).is_err() {
                    worker.pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Closes the queues and waits up to `wait` for them to drain; a sink still busy then
    /// is reported with the number of events it did not deliver.
    pub fn finish(mut self, wait: Duration) {
        for worker in &mut self.workers {
            worker.queue = None;
        }
        let deadline = Instant::now() + wait;
        let mut open = self.workers.len();
        while open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(_) => open -= 1,
                Err(_) => break,
            }
        }

        for worker in &self.workers {
            let pending = worker.pending.load(Ordering::SeqCst);
            if pending > 0 {
                (self.print)(&format!(
                    "warning: notify {}: gave up after waiting {}s at the end of the run; \
                     {pending} event(s) not delivered",
                    worker.name,
                    wait.as_secs()
                ));
            }
        }
    }
}

impl Worker {
    fn spawn(index: usize, sink: Sink, done: mpsc::Sender<usize>) -> Worker {
        let (queue, events) = mpsc::channel::<Event>();
        let pending = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            name: sink.name.clone(),
            config: sink.config.clone(),
            queue: Some(queue),
            pending: pending.clone(),
        };

        std::thread::Builder::new()
            .name(format!("notify-{index}"))
            .spawn(move || {
                for event in events {
                    if let Err(e) = sink.deliver(&event) {
                        (sink.print)(&format!(
                            "warning: notify {}: {} {}",
                            sink.name,
                            event.event.name(),
                            e
                        ));
                    }
                    pending.fetch_sub(1, Ordering::SeqCst);
                }
                let _ = done.send(index);
            })
            .expect("a notification thread starts");
        worker
    }
}

/// A sink with its key read from the secrets file and its log file resolved.
fn prepare(env: &Environment, config: &SinkConfig, print: Printer) -> Result<Sink, Error> {
    let name = config.display_name();
    let key = match config.secret() {
        Some(secret) => match env.secrets.get(secret) {
            Some(value) => Some(value.as_bytes().to_vec()),
            None => {
                return Err(Error::config(
                    secrets_file(&env.name),
                    format!("notify sink {name} signs with secret `{secret}`, which is missing"),
                    format!("add a line `{secret}=...`, or remove `secret:` from the sink"),
                ))
            }
        },
        None => None,
    };
    let file = match config {
        SinkConfig::Log(LogConfig {
            file: Some(file), ..
        }) => Some(env.path(file)),
        _ => None,
    };
    Ok(Sink {
        name,
        config: config.clone(),
        key,
        file,
        print,
    })
}

/// The secrets the sinks of `sinks` read, for `slipway secrets check`.
pub fn secrets_used(sinks: &[SinkConfig]) -> Vec<String> {
    sinks
        .iter()
        .filter_map(|s| s.secret().map(String::from))
        .collect()
}
