//! The `notify:` list of the inventory: where lifecycle events go. Each entry names its
//! `kind` (`log`, `webhook` or `ntfy`); unknown keys are errors like everywhere else in the
//! inventory. Keys that sign requests name a secret of the environment's secrets file,
//! never a value.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::event::Kind;

/// One sink.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// JSON lines appended to a file, or written to stderr.
    Log(LogConfig),
    /// A JSON POST to any URL.
    Webhook(WebhookConfig),
    /// A message to an ntfy topic.
    Ntfy(NtfyConfig),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// File the lines are appended to, relative to the project; stderr when absent.
    #[serde(default)]
    pub file: Option<String>,
    /// Event names to send; default every run and node event.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
    /// Name of a secret in `inventory/<env>.env` whose value keys the HMAC-SHA256
    /// signature header.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Seconds one attempt may take, connection included.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Attempts after the first one; the waits between them double from half a second.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NtfyConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// The topic's URL, e.g. `https://ntfy.sh/my-deploys`.
    pub url: String,
    /// The notification's title; default `<app> <env>: <event>`.
    #[serde(default)]
    pub title: Option<String>,
    /// 1 (min) to 5 (max); failures are sent with at least 4.
    #[serde(default = "default_priority")]
    pub priority: u8,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Seconds one attempt may take, connection included.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Attempts after the first one; the waits between them double from half a second.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// How hard an HTTP sink tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub timeout_seconds: u64,
    pub retries: u32,
}

fn default_priority() -> u8 {
    3
}

fn default_timeout() -> u64 {
    5
}

fn default_retries() -> u32 {
    3
}

impl SinkConfig {
    /// The name warnings use: the configured one, else the kind and the URL's host (never
    /// its path, which may hold a token).
    pub fn display_name(&self) -> String {
        let (kind, name, url) = match self {
            SinkConfig::Log(c) => ("log", &c.name, c.file.as_deref().unwrap_or("stderr")),
            SinkConfig::Webhook(c) => ("webhook", &c.name, host_of(&c.url)),
            SinkConfig::Ntfy(c) => ("ntfy", &c.name, host_of(&c.url)),
        };
        match name {
            Some(name) => format!("{kind} `{name}`"),
            None => format!("{kind} {url}"),
        }
    }

    pub fn events(&self) -> Option<&[String]> {
        match self {
            SinkConfig::Log(c) => c.events.as_deref(),
            SinkConfig::Webhook(c) => c.events.as_deref(),
            SinkConfig::Ntfy(c) => c.events.as_deref(),
        }
    }

    /// Timeout and retries of an HTTP sink; `None` for a log.
    pub fn delivery(&self) -> Option<Delivery> {
        let (timeout_seconds, retries) = match self {
            SinkConfig::Log(_) => return None,
            SinkConfig::Webhook(c) => (c.timeout_seconds, c.retries),
            SinkConfig::Ntfy(c) => (c.timeout_seconds, c.retries),
        };
        Some(Delivery {
            timeout_seconds,
            retries,
        })
    }

    /// The secret this sink reads from the secrets file, if any.
    pub fn secret(&self) -> Option<&str> {
        match self {
            SinkConfig::Webhook(c) => c.secret.as_deref(),
            _ => None,
        }
    }

    /// Whether this sink takes events of `kind`.
    pub fn wants(&self, kind: Kind) -> bool {
        match self.events() {
            Some(names) => names.iter().any(|n| n == kind.name()),
            None => kind.is_lifecycle(),
        }
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h)
}

/// Checks every sink's values; errors name the file, the sink and the fix.
pub fn validate(sinks: &[SinkConfig], file: &str) -> Result<(), Error> {
    for (i, sink) in sinks.iter().enumerate() {
        let at = format!("notify[{i}] ({})", sink.display_name());
        if let SinkConfig::Webhook(WebhookConfig { url, .. })
        | SinkConfig::Ntfy(NtfyConfig { url, .. }) = sink
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::config(
                    file,
                    format!("{at}: key `url` must start with http:// or https:// (got {url:?})"),
                    "write the full URL the events are posted to",
                ));
            }
        }
        if let SinkConfig::Ntfy(c) = sink {
            if !(1..=5).contains(&c.priority) {
                return Err(Error::config(
                    file,
                    format!("{at}: key `priority` must be 1 to 5 (got {})", c.priority),
                    "use 1 (min), 3 (default) or 5 (max)",
                ));
            }
        }
        for name in sink.events().unwrap_or_default() {
            if Kind::from_name(name).is_none() {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                return Err(Error::config(
                    file,
                    format!("{at}: key `events` names an unknown event `{name}`"),
                    format!("use some of: {}", known.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<SinkConfig>, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn reads_every_kind_with_defaults() {
        let sinks = parse(
            "- {kind: log}\n\
             - {kind: webhook, url: 'https://h.example/x?token=t', secret: HOOK_KEY, retries: 1}\n\
             - {kind: ntfy, url: 'https://ntfy.sh/t', tags: [rocket], priority: 4}\n",
        )
        .unwrap();

        let SinkConfig::Webhook(hook) = &sinks[1] else {
            panic!("a webhook")
        };
        assert_eq!(hook.retries, 1);
        assert_eq!(hook.timeout_seconds, 5);
        assert_eq!(sinks[1].display_name(), "webhook h.example");
        assert_eq!(sinks[1].secret(), Some("HOOK_KEY"));
        assert_eq!(sinks[0].display_name(), "log stderr");
        assert!(validate(&sinks, "f").is_ok());
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let err = parse("- {kind: webhook, url: 'http://h', retry: 2}\n").unwrap_err();
        assert!(err.to_string().contains("retry"), "{err}");
        let err = parse("- {kind: log, fiel: x}\n").unwrap_err();
        assert!(err.to_string().contains("fiel"), "{err}");
        assert!(parse("- {kind: slack, url: 'http://h'}\n").is_err());
    }

    #[test]
    fn validation_names_the_bad_value() {
        let bad_url = parse("- {kind: webhook, url: 'h.example/x'}\n").unwrap();
        assert!(validate(&bad_url, "f").is_err());
        let bad_priority = parse("- {kind: ntfy, url: 'http://h/t', priority: 9}\n").unwrap();
        assert!(validate(&bad_priority, "f").is_err());
        let bad_event = parse("- {kind: log, events: [node.exploded]}\n").unwrap();
        let err = validate(&bad_event, "f").unwrap_err().to_string();
        assert!(err.contains("node.exploded"), "{err}");
    }

    #[test]
    fn default_events_are_lifecycle_only() {
        let sinks = parse("- {kind: log}\n- {kind: log, events: [step.failed]}\n").unwrap();
        assert!(sinks[0].wants(Kind::NodeFailed));
        assert!(!sinks[0].wants(Kind::StepStarted));
        assert!(sinks[1].wants(Kind::StepFailed));
        assert!(!sinks[1].wants(Kind::NodeFailed));
    }
}
