//! What happened during a deploy or rollback, as data: one [`Event`] per step started,
//! finished or failed on a node, per node started and ended, and per run started and ended.
//! The same event is printed by `--json` and handed to the notification sinks, so both
//! carry one shape. Every text field is redacted when the event is made.

use serde::Serialize;

use crate::redact::redact;

/// The kinds of event, named `<scope>.<what>` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    #[serde(rename = "run.started")]
    RunStarted,
    #[serde(rename = "run.succeeded")]
    RunSucceeded,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "node.started")]
    NodeStarted,
    #[serde(rename = "node.succeeded")]
    NodeSucceeded,
    #[serde(rename = "node.failed")]
    NodeFailed,
    /// The node failed after its traffic had moved, and traffic is back where it was.
    #[serde(rename = "node.rolled_back")]
    NodeRolledBack,
    /// The node was left unchanged: a canary failed, or too many nodes had (`cause`).
    #[serde(rename = "node.skipped")]
    NodeSkipped,
    #[serde(rename = "step.started")]
    StepStarted,
    #[serde(rename = "step.finished")]
    StepFinished,
    #[serde(rename = "step.failed")]
    StepFailed,
}

impl Kind {
    /// Every kind, in the order a run emits them.
    pub const ALL: [Kind; 11] = [
        Kind::RunStarted,
        Kind::NodeStarted,
        Kind::StepStarted,
        Kind::StepFinished,
        Kind::StepFailed,
        Kind::NodeSucceeded,
        Kind::NodeFailed,
        Kind::NodeRolledBack,
        Kind::NodeSkipped,
        Kind::RunSucceeded,
        Kind::RunFailed,
    ];

    /// The wire name, e.g. `node.failed`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::RunStarted => "run.started",
            Kind::RunSucceeded => "run.succeeded",
            Kind::RunFailed => "run.failed",
            Kind::NodeStarted => "node.started",
            Kind::NodeSucceeded => "node.succeeded",
            Kind::NodeFailed => "node.failed",
            Kind::NodeRolledBack => "node.rolled_back",
            Kind::NodeSkipped => "node.skipped",
            Kind::StepStarted => "step.started",
            Kind::StepFinished => "step.finished",
            Kind::StepFailed => "step.failed",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Run and node events: what notification sinks receive by default.
    pub fn is_lifecycle(self) -> bool {
        !matches!(
            self,
            Kind::StepStarted | Kind::StepFinished | Kind::StepFailed
        )
    }

    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Kind::RunFailed | Kind::NodeFailed | Kind::NodeRolledBack | Kind::StepFailed
        )
    }
}

/// What every event of one run shares.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `deploy` or `rollback`.
    pub action: String,
    pub deploy_id: String,
    pub environment: String,
    pub app: String,
}

/// One event. Every key is always present (null when it does not apply), so a consumer
/// can read any event with one schema.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: Kind,
    /// `<deploy id>-<sequence number>`: unique per event, the same across retries.
    pub id: String,
    pub action: String,
    pub deploy_id: String,
    pub environment: String,
    pub app: String,
    pub node: Option<String>,
    pub release: Option<String>,
    pub step: Option<String>,
    /// Seconds the step, the node or the run took (on finished, failed and ended events).
    pub elapsed_seconds: Option<f64>,
    /// Why it failed (failure events only).
    pub cause: Option<String>,
    /// What slipway did about a failure (node events only).
    pub outcome: Option<String>,
    /// Run events: the nodes selected (started), or those that did not succeed (ended).
    pub nodes: Option<Vec<String>>,
    /// UTC, RFC 3339 with milliseconds.
    pub timestamp: String,
}

impl Event {
    /// A bare event of `kind` in `run`, numbered `seq`; the caller fills in the rest.
    pub fn new(kind: Kind, run: &RunInfo, seq: u64) -> Event {
        Event {
            event: kind,
            id: format!("{}-{seq}", run.deploy_id),
            action: run.action.clone(),
            deploy_id: run.deploy_id.clone(),
            environment: run.environment.clone(),
            app: run.app.clone(),
            node: None,
            release: None,
            step: None,
            elapsed_seconds: None,
            cause: None,
            outcome: None,
            nodes: None,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// The event as one line of JSON, every secret masked.
    pub fn to_json(&self) -> String {
        let mut clean = self.clone();
        for field in [
            &mut clean.node,
            &mut clean.release,
            &mut clean.step,
            &mut clean.cause,
            &mut clean.outcome,
        ]
        .into_iter()
        .flatten()
        {
            *field = redact(field);
        }
        let line = serde_json::to_string(&clean).expect("an event serializes");
        redact(&line)
    }

    /// One line for people: `node-1: deploy of R failed in health_gate: cause`.
    pub fn headline(&self) -> String {
        let what = match self.event {
            Kind::RunStarted => "started".to_string(),
            Kind::RunSucceeded | Kind::NodeSucceeded => "succeeded".to_string(),
            Kind::RunFailed | Kind::NodeFailed => "failed".to_string(),
            Kind::NodeRolledBack => "was rolled back".to_string(),
            Kind::NodeSkipped => "was skipped".to_string(),
            Kind::NodeStarted => "started".to_string(),
            Kind::StepStarted => "step started".to_string(),
            Kind::StepFinished => "step finished".to_string(),
            Kind::StepFailed => "step failed".to_string(),
        };
        let mut line = match &self.node {
            Some(node) => format!("{node}: "),
            None => format!("{} {}: ", self.app, self.environment),
        };
        line.push_str(&self.action);
        if let Some(release) = &self.release {
            line.push_str(&format!(" of {release}"));
        }
        line.push_str(&format!(" {what}"));
        if let Some(step) = &self.step {
            line.push_str(&format!(" in {step}"));
        }
        if let Some(cause) = self.cause.as_deref().and_then(|c| c.lines().next()) {
            line.push_str(&format!(": {cause}"));
        }
        redact(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunInfo {
        RunInfo {
            action: "deploy".into(),
            deploy_id: "d-1".into(),
            environment: "staging".into(),
            app: "events".into(),
        }
    }

    #[test]
    fn every_key_is_present_and_names_are_dotted() {
        let event = Event::new(Kind::NodeRolledBack, &run(), 7);
        let value: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();

        assert_eq!(value["event"], "node.rolled_back");
        assert_eq!(value["id"], "d-1-7");
        for key in ["node", "release", "step", "cause", "outcome", "nodes"] {
            assert!(value[key].is_null(), "{key} should be null");
        }
        assert_eq!(value.as_object().unwrap().len(), 14);
    }

    #[test]
    fn names_round_trip_and_lifecycle_excludes_steps() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
            let wire = serde_json::to_value(kind).unwrap();
            assert_eq!(wire, kind.name());
        }
        assert!(!Kind::StepFailed.is_lifecycle());
        assert!(Kind::NodeRolledBack.is_lifecycle());
    }

    #[test]
    fn secrets_are_masked_even_when_json_escapes_them() {
        let secret = "ev-\"quoted\"-secret";
        crate::redact::register(secret);
        let mut event = Event::new(Kind::NodeFailed, &run(), 1);
        event.cause = Some(format!("password {secret} refused"));

        let line = event.to_json();
        assert!(!line.contains("quoted"), "{line}");
        assert!(line.contains("password *** refused"), "{line}");
        assert!(!event.headline().contains("quoted"));
    }

    #[test]
    fn headline_names_node_step_and_first_line_of_cause() {
        let mut event = Event::new(Kind::NodeFailed, &run(), 1);
        event.node = Some("node-1".into());
        event.release = Some("abc-1".into());
        event.step = Some("health_gate".into());
        event.cause = Some("not healthy\nlog lines".into());
        assert_eq!(
            event.headline(),
            "node-1: deploy of abc-1 failed in health_gate: not healthy"
        );
    }
}
