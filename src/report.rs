//! The one place that writes progress to the terminal: a live line per node on a TTY
//! (indicatif), plain `node | message` lines otherwise (CI). Everything is redacted.
//!
//! It also turns what happens into [`Event`]s (see `crate::event`): printed one JSON line
//! each on stdout with `--json`, and handed to the notification sinks. When the run ends
//! it prints the summary table (see `crate::summary`) on stderr.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::Environment;
use crate::error::Error;
use crate::event::{Event, Kind, RunInfo};
use crate::notify::{Notifier, Printer, FINAL_WAIT};
use crate::redact::redact;
use crate::summary::Summary;

pub struct Reporter {
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    /// Print every event as a JSON line on stdout.
    json: bool,
    run: Mutex<Option<Run>>,
}

/// The run in progress, between [`Reporter::start_run`] and [`Reporter::end_run`].
struct Run {
    info: RunInfo,
    release: Option<String>,
    started: Instant,
    seq: u64,
    summary: Summary,
    /// Each started node's release.
    releases: BTreeMap<String, String>,
    /// A run-level step (the build) that started and has not finished.
    open_step: Option<(String, Instant)>,
    notifier: Option<Notifier>,
}

impl Reporter {
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Reporter {
            multi: tty.then(MultiProgress::new),
            bars: Mutex::new(BTreeMap::new()),
            json: false,
            run: Mutex::new(None),
        }
    }

    /// Also print every event as one JSON line on stdout.
    pub fn with_json(mut self, json: bool) -> Self {
        self.json = json;
        self
    }

    /// A step began on a node.
    pub fn step(&self, node: &str, step: &str) {
        match self.bar(node) {
            Some(bar) => bar.set_message(format!("{step}...")),
            None => eprintln!("{node} | {step}..."),
        }
    }

    /// Something worth a line of its own happened on a node.
    pub fn info(&self, node: &str, message: &str) {
        let message = redact(message);
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(format!("{node} | {message}"));
            }
            None => eprintln!("{node} | {message}"),
        }
    }

    /// The node is done; its live line becomes a final one.
    pub fn finish(&self, node: &str, message: &str) {
        let message = redact(message);
        match self.bar(node) {
            Some(bar) => bar.finish_with_message(message),
            None => eprintln!("{node} | {message}"),
        }
    }

    fn bar(&self, node: &str) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(node.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:12} [{elapsed:>4}] {msg}")
                    .expect("static template"),
            );
            bar.set_prefix(node.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Some(bar.clone())
    }
}

impl Reporter {
    /// A run begins: its sinks start, and `run.started` goes out. A sink whose signing
    /// secret is missing stops the run here, before any node is touched.
    pub fn start_run(
        &self,
        env: &Environment,
        deploy_id: &str,
        action: &str,
        release: Option<&str>,
        nodes: &[String],
    ) -> Result<(), Error> {
        let notifier = Notifier::start(env, self.printer())?;
        let mut run = Run {
            info: RunInfo {
                action: action.to_string(),
                deploy_id: deploy_id.to_string(),
                environment: env.name.clone(),
                app: env.settings.app.clone(),
            },
            release: release.map(String::from),
            started: Instant::now(),
            seq: 0,
            summary: Summary::new(nodes),
            releases: BTreeMap::new(),
            open_step: None,
            notifier: Some(notifier),
        };
        self.emit(&mut run, Kind::RunStarted, |e| {
            e.nodes = Some(nodes.to_vec());
        });
        *self.lock_run() = Some(run);
        Ok(())
    }

    /// A step of the run itself (not of a node) began, such as the build.
    pub fn run_step_started(&self, step: &str) {
        self.run_step_started_at(step, "on this machine");
    }

    /// A step of the run began that runs at `place` (`once, on db-1`) for every node.
    pub fn run_step_started_at(&self, step: &str, place: &str) {
        self.run_step_finished();
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        for bar in bars.values() {
            bar.set_message(format!("{step} ({place})..."));
        }
        drop(bars);
        self.with_run(|reporter, run| {
            run.open_step = Some((step.to_string(), Instant::now()));
            reporter.emit(run, Kind::StepStarted, |e| e.step = Some(step.into()));
        });
    }

    /// The run-level step that started last finished well.
    pub fn run_step_finished(&self) {
        self.with_run(|reporter, run| {
            let Some((step, began)) = run.open_step.take() else {
                return;
            };
            reporter.emit(run, Kind::StepFinished, |e| {
                e.step = Some(step);
                e.elapsed_seconds = Some(began.elapsed().as_secs_f64());
            });
        });
    }

    /// A node's deploy began.
    pub fn node_started(&self, node: &str, release: &str) {
        self.with_run(|reporter, run| {
            run.summary.started(node, release);
            run.releases.insert(node.into(), release.into());
            reporter.emit(run, Kind::NodeStarted, |e| e.node = Some(node.into()));
        });
    }

    /// A step began on a node: its live line shows it, and `step.started` goes out.
    pub fn step_started(&self, node: &str, step: &str) {
        self.step(node, step);
        self.with_run(|reporter, run| {
            reporter.emit(run, Kind::StepStarted, |e| {
                e.node = Some(node.into());
                e.step = Some(step.into());
            });
        });
    }

    /// A step ended on a node, well or with `error`.
    pub fn step_finished(
        &self,
        node: &str,
        step: &str,
        elapsed: Duration,
        error: Option<&anyhow::Error>,
    ) {
        let kind = match error {
            None => Kind::StepFinished,
            Some(_) => Kind::StepFailed,
        };
        self.with_run(|reporter, run| {
            reporter.emit(run, kind, |e| {
                e.node = Some(node.into());
                e.step = Some(step.into());
                e.elapsed_seconds = Some(elapsed.as_secs_f64());
                e.cause = error.map(|err| format!("{err:#}"));
            });
        });
    }

    /// A node's deploy ended. `rolled_back`: it failed after traffic had moved, and
    /// traffic is back where it was.
    pub fn node_finished(&self, node: &str, result: &anyhow::Result<()>, rolled_back: bool) {
        let failure = result.as_ref().err().map(describe);
        self.with_run(|reporter, run| {
            let row_cause = failure.as_ref().map(|f| match &f.step {
                Some(step) => format!("{step}: {}", f.cause),
                None => f.cause.clone(),
            });
            let took = run.summary.finished(node, row_cause).as_secs_f64();
            let fill = |e: &mut Event| {
                e.node = Some(node.into());
                e.elapsed_seconds = Some(took);
                if let Some(f) = &failure {
                    e.step = f.step.clone();
                    e.cause = Some(f.cause.clone());
                    e.outcome = f.outcome.clone();
                }
            };
            match &failure {
                None => reporter.emit(run, Kind::NodeSucceeded, fill),
                Some(_) => {
                    reporter.emit(run, Kind::NodeFailed, fill);
                    if rolled_back {
                        reporter.emit(run, Kind::NodeRolledBack, fill);
                    }
                }
            }
        });
    }

    /// A node was left unchanged for `cause` (its lock already released): its line says
    /// so, its summary row is `skipped`, and `node.skipped` goes out.
    pub fn node_skipped(&self, node: &str, cause: &str) {
        self.finish(node, &format!("skipped: {cause}"));
        self.with_run(|reporter, run| {
            run.summary.skipped(node, cause);
            reporter.emit(run, Kind::NodeSkipped, |e| {
                e.node = Some(node.into());
                e.cause = Some(cause.into());
            });
        });
    }

    /// The run ended with `result`: `run.succeeded` or `run.failed` goes out, the summary
    /// table is printed, and the sinks get a bounded time to deliver. A run that reports
    /// success while a selected node did not succeed is turned into a failure.
    pub fn end_run(&self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        let Some(mut run) = self.lock_run().take() else {
            return result;
        };
        let missed = run.summary.not_succeeded().len();
        let result = match result {
            Ok(()) if missed > 0 => Err(Error::Nodes {
                failed: missed,
                total: run.summary.len(),
            }
            .into()),
            other => other,
        };

        if let (Err(e), Some((step, began))) = (&result, run.open_step.take()) {
            self.emit(&mut run, Kind::StepFailed, |ev| {
                ev.step = Some(step);
                ev.elapsed_seconds = Some(began.elapsed().as_secs_f64());
                ev.cause = Some(describe(e).cause);
            });
        }
        let missed: Vec<String> = run
            .summary
            .not_succeeded()
            .iter()
            .map(|(node, _)| node.to_string())
            .collect();
        let kind = match &result {
            Ok(()) => Kind::RunSucceeded,
            Err(_) => Kind::RunFailed,
        };
        let elapsed = run.started.elapsed().as_secs_f64();
        self.emit(&mut run, kind, |e| {
            e.elapsed_seconds = Some(elapsed);
            e.nodes = Some(missed);
            e.cause = result.as_ref().err().map(|err| err.to_string());
        });

        if run.summary.any_started() {
            (self.printer())(&run.summary.render());
        }
        if let Some(notifier) = run.notifier.take() {
            notifier.finish(FINAL_WAIT);
        }
        result
    }

    /// Makes the event, prints it with `--json`, and queues it for the sinks.
    fn emit(&self, run: &mut Run, kind: Kind, fill: impl FnOnce(&mut Event)) {
        let mut event = Event::new(kind, &run.info, run.seq);
        run.seq += 1;
        event.release = run.release.clone();
        fill(&mut event);
        if let Some(node) = &event.node {
            if let Some(release) = run.releases.get(node) {
                event.release = Some(release.clone());
            }
        }

        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", event.to_json());
            let _ = out.flush();
        }
        if let Some(notifier) = &run.notifier {
            notifier.send(&event);
        }
    }

    fn with_run(&self, f: impl FnOnce(&Self, &mut Run)) {
        if let Some(run) = self.lock_run().as_mut() {
            f(self, run);
        }
    }

    fn lock_run(&self) -> std::sync::MutexGuard<'_, Option<Run>> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints a line above the live lines on a terminal, on stderr otherwise.
    fn printer(&self) -> Printer {
        let multi = self.multi.clone();
        Arc::new(move |line: &str| {
            let line = redact(line);
            match &multi {
                Some(multi) => {
                    let _ = multi.println(&line);
                }
                None => eprintln!("{line}"),
            }
        })
    }
}

/// A failure, split into the step it happened in, its cause, and what was done about it.
struct Failure {
    step: Option<String>,
    cause: String,
    outcome: Option<String>,
}

fn describe(err: &anyhow::Error) -> Failure {
    match err.chain().find_map(|c| c.downcast_ref::<Error>()) {
        Some(Error::Step {
            step,
            cause,
            outcome,
            ..
        }) => Failure {
            step: Some(step.clone()),
            cause: cause.clone(),
            outcome: Some(outcome.clone()).filter(|o| !o.is_empty()),
        },
        _ => Failure {
            step: None,
            cause: format!("{err:#}"),
            outcome: None,
        },
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}
