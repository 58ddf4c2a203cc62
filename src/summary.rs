//! The table printed when a run ends: one row per selected node with its result, release,
//! duration and cause, then one line that names every node that did not succeed.

use std::time::{Duration, Instant};

use crate::redact::redact;

/// The longest cause the table shows; the full one is in the error above it.
const CAUSE_WIDTH: usize = 90;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    NotStarted,
    /// Started and never reported an end (the run stopped around it).
    Unfinished,
    Succeeded,
    Failed,
    /// Never started on purpose (a canary failed, or too many nodes did); the cause says why.
    Skipped,
}

impl State {
    fn label(self) -> &'static str {
        match self {
            State::NotStarted => "not started",
            State::Unfinished => "unfinished",
            State::Succeeded => "ok",
            State::Failed => "failed",
            State::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub node: String,
    pub state: State,
    pub release: Option<String>,
    started: Option<Instant>,
    pub duration: Option<Duration>,
    pub cause: Option<String>,
}

/// The rows of one run, in selection order.
#[derive(Debug, Default)]
pub struct Summary {
    rows: Vec<Row>,
}

impl Summary {
    pub fn new(nodes: &[String]) -> Summary {
        let rows = nodes
            .iter()
            .map(|node| Row {
                node: node.clone(),
                state: State::NotStarted,
                release: None,
                started: None,
                duration: None,
                cause: None,
            })
            .collect();
        Summary { rows }
    }

    /// The node began; its clock starts now.
    pub fn started(&mut self, node: &str, release: &str) {
        let row = self.row(node);
        row.state = State::Unfinished;
        row.release = Some(release.to_string());
        row.started = Some(Instant::now());
    }

    /// The node ended; returns how long it took.
    pub fn finished(&mut self, node: &str, cause: Option<String>) -> Duration {
        let row = self.row(node);
        let took = row.started.map(|t| t.elapsed()).unwrap_or_default();
        row.state = if cause.is_some() {
            State::Failed
        } else {
            State::Succeeded
        };
        row.duration = Some(took);
        row.cause = cause;
        took
    }

    /// The node was left alone, for `cause`; it took no time.
    pub fn skipped(&mut self, node: &str, cause: &str) {
        let row = self.row(node);
        row.state = State::Skipped;
        row.cause = Some(cause.to_string());
    }

    pub fn any_started(&self) -> bool {
        self.rows.iter().any(|r| r.state != State::NotStarted)
    }

    /// Nodes that did not succeed, with what became of them (`skipped: canary failed`).
    pub fn not_succeeded(&self) -> Vec<(&str, String)> {
        self.rows
            .iter()
            .filter(|r| r.state != State::Succeeded)
            .map(|r| (r.node.as_str(), r.outcome()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table and its closing line, ready to print.
    pub fn render(&self) -> String {
        let mut lines = vec![[
            "node".to_string(),
            "result".into(),
            "release".into(),
            "duration".into(),
            "cause".into(),
        ]];
        for row in &self.rows {
            lines.push([
                row.node.clone(),
                row.state.label().into(),
                row.release.clone().unwrap_or_else(|| "-".into()),
                row.duration
                    .map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
                row.cause.as_deref().map_or("-".into(), short),
            ]);
        }

        let widths: Vec<usize> = (0..4)
            .map(|col| {
                lines
                    .iter()
                    .map(|l| l[col].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in &lines {
            for (col, width) in widths.iter().enumerate() {
                out.push_str(&format!("{:<width$}  ", line[col]));
            }
            out.push_str(&line[4]);
            out.push('\n');
        }
        out.push_str(&self.closing_line());
        redact(&out)
    }

    fn closing_line(&self) -> String {
        let failed = self.not_succeeded();
        let total = self.rows.len();
        if failed.is_empty() {
            return format!("all {total} node(s) succeeded");
        }
        let names: Vec<String> = failed
            .iter()
            .map(|(node, label)| format!("{node} ({label})"))
            .collect();
        format!(
            "{} of {total} node(s) succeeded; did not succeed: {}",
            total - failed.len(),
            names.join(", ")
        )
    }

    fn row(&mut self, node: &str) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.node == node) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            node: node.to_string(),
            state: State::NotStarted,
            release: None,
            started: None,
            duration: None,
            cause: None,
        });
        self.rows.last_mut().expect("just pushed")
    }
}

impl Row {
    /// The result, with the cause when the node was skipped (that is the whole story).
    fn outcome(&self) -> String {
        match (self.state, &self.cause) {
            (State::Skipped, Some(cause)) => format!("skipped: {cause}"),
            (state, _) => state.label().to_string(),
        }
    }
}

/// The first line of a cause, cut to the table's width.
fn short(cause: &str) -> String {
    let line = cause.lines().next().unwrap_or_default().trim();
    if line.chars().count() <= CAUSE_WIDTH {
        return line.to_string();
    }
    let cut: String = line.chars().take(CAUSE_WIDTH - 3).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rows_and_closing_line_name_every_node_that_did_not_succeed() {
        let mut summary = Summary::new(&nodes(&["a", "b", "c"]));
        summary.started("a", "r1");
        summary.started("b", "r1");
        summary.finished("a", None);
        summary.finished("b", Some("health_gate: not healthy\nlogs...".into()));

        let text = summary.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("node  result"), "{text}");
        assert!(lines[1].starts_with("a     ok           r1"), "{text}");
        assert!(lines[2].contains("failed") && lines[2].ends_with("health_gate: not healthy"));
        assert!(lines[3].starts_with("c     not started  -"), "{text}");
        assert_eq!(
            lines[4],
            "1 of 3 node(s) succeeded; did not succeed: b (failed), c (not started)"
        );
        assert_eq!(summary.not_succeeded().len(), 2);
    }

    #[test]
    fn skipped_nodes_show_their_cause_in_the_row_and_the_closing_line() {
        let mut summary = Summary::new(&nodes(&["a", "b", "c"]));
        summary.started("a", "r1");
        summary.finished("a", Some("health_gate: not healthy".into()));
        summary.skipped("b", "canary failed");
        summary.skipped("c", "canary failed");

        let text = summary.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].starts_with("b     skipped  -"), "{text}");
        assert!(lines[2].ends_with("canary failed"), "{text}");
        assert_eq!(
            lines[4],
            "0 of 3 node(s) succeeded; did not succeed: a (failed), b (skipped: canary failed), \
             c (skipped: canary failed)"
        );
        assert!(summary.any_started());
    }

    #[test]
    fn all_good_and_long_causes_cut() {
        let mut summary = Summary::new(&nodes(&["a"]));
        summary.started("a", "r1");
        summary.finished("a", None);
        assert!(summary.render().ends_with("all 1 node(s) succeeded"));
        assert_eq!(short(&"x".repeat(200)).chars().count(), CAUSE_WIDTH);
    }
}
