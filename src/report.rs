//! The one place that writes progress to the terminal: a live line per node on a TTY
//! (indicatif), plain `node | message` lines otherwise (CI). Everything is redacted.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::redact::redact;

pub struct Reporter {
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

impl Reporter {
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Reporter {
            multi: tty.then(MultiProgress::new),
            bars: Mutex::new(BTreeMap::new()),
        }
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
        match (&self.multi, self.bar(node)) {
            (Some(multi), Some(_)) => {
                let _ = multi.println(format!("{node} | {message}"));
            }
            _ => eprintln!("{node} | {message}"),
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

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}
