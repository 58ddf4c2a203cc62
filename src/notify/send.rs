//! Delivering one event to one sink: a JSON line to a file or stderr, a signed JSON POST to
//! a webhook, or a message to an ntfy topic. HTTP sinks retry with doubling waits; each
//! attempt has its own timeout.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::{Delivery, NtfyConfig, SinkConfig};
use crate::event::Event;
use crate::redact::redact;

/// Writes a line where people read it (above the live lines on a terminal).
pub type Printer = Arc<dyn Fn(&str) + Send + Sync>;

/// The header that carries a webhook's signature: `sha256=<hex HMAC of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Slipway-Signature";

/// The wait before the first retry; each later one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// A configured sink, ready to deliver.
pub struct Sink {
    pub name: String,
    pub config: SinkConfig,
    /// The HMAC key of a webhook, read from the secrets file.
    pub key: Option<Vec<u8>>,
    /// A log sink's file, resolved against the project.
    pub file: Option<PathBuf>,
    pub print: Printer,
}

impl Sink {
    /// Delivers one event; the error says what went wrong on the last attempt.
    pub fn deliver(&self, event: &Event) -> Result<(), String> {
        match &self.config {
            SinkConfig::Log(_) => self.write_line(&event.to_json()),
            SinkConfig::Webhook(_) => self.webhook(event),
            SinkConfig::Ntfy(config) => self.ntfy(config, event),
        }
    }

    fn write_line(&self, line: &str) -> Result<(), String> {
        let Some(path) = &self.file else {
            (self.print)(line);
            return Ok(());
        };
        let mut file = std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        writeln!(file, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    fn webhook(&self, event: &Event) -> Result<(), String> {
        let SinkConfig::Webhook(config) = &self.config else {
            unreachable!("webhook() is only called for webhooks")
        };
        let body = event.to_json();
        let signature = self.key.as_deref().map(|key| sign(key, body.as_bytes()));

        with_retries(self.delivery(), |agent| {
            let mut request = agent
                .post(&config.url)
                .set("Content-Type", "application/json")
                .set("User-Agent", concat!("slipway/", env!("CARGO_PKG_VERSION")))
                .set("X-Slipway-Event", event.event.name())
                .set("X-Slipway-Delivery", &event.id);
            if let Some(signature) = &signature {
                request = request.set(SIGNATURE_HEADER, signature);
            }
            attempt(request.send_string(&body))
        })
    }

    fn ntfy(&self, config: &NtfyConfig, event: &Event) -> Result<(), String> {
        let (title, priority, tags, message) = ntfy_parts(config, event);
        with_retries(self.delivery(), |agent| {
            let mut request = agent
                .post(&config.url)
                .set("Title", &title)
                .set("Priority", &priority.to_string());
            if !tags.is_empty() {
                request = request.set("Tags", &tags);
            }
            attempt(request.send_string(&message))
        })
    }

    fn delivery(&self) -> Delivery {
        self.config.delivery().expect("an HTTP sink")
    }
}

/// Title, priority, tags and body of an ntfy message, all redacted and one line each.
pub fn ntfy_parts(config: &NtfyConfig, event: &Event) -> (String, u8, String, String) {
    let title = config.title.clone().unwrap_or_else(|| {
        format!(
            "{} {}: {}",
            event.app,
            event.environment,
            event.event.name()
        )
    });
    let priority = if event.event.is_failure() {
        config.priority.max(4)
    } else {
        config.priority
    };
    let tags = config.tags.join(",");
    (
        header_value(&title),
        priority,
        header_value(&tags),
        event.headline(),
    )
}

/// A header value: redacted, printable ASCII only.
fn header_value(text: &str) -> String {
    redact(text)
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before retry number `n` (0 is the first retry).
pub fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(n))
        .min(MAX_BACKOFF)
}

/// Why one attempt did not deliver.
enum Refused {
    Status(u16),
    Transport(String),
}

fn attempt(result: Result<ureq::Response, ureq::Error>) -> Result<(), Refused> {
    match result {
        Ok(_) => Ok(()),
        Err(ureq::Error::Status(code, _)) => Err(Refused::Status(code)),
        // Kind and message only: the URL, which may carry a token, stays out of warnings.
        Err(ureq::Error::Transport(e)) => {
            let mut text = e.kind().to_string();
            if let Some(message) = e.message() {
                text.push_str(&format!(": {message}"));
            }
            if let Some(source) = std::error::Error::source(&e) {
                text.push_str(&format!(" ({source})"));
            }
            Err(Refused::Transport(text))
        }
    }
}

/// Sends with `send` until it succeeds, the answer is final, or the retries are spent.
fn with_retries(
    delivery: Delivery,
    send: impl Fn(&ureq::Agent) -> Result<(), Refused>,
) -> Result<(), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(delivery.timeout_seconds.max(1)))
        .redirects(0)
        .build();
    let attempts = delivery.retries + 1;
    let mut last = String::new();

    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(backoff(attempt - 1));
        }
        match send(&agent) {
            Ok(()) => return Ok(()),
            Err(Refused::Status(code)) if !retryable(code) => {
                return Err(format!("the receiver answered {code}"));
            }
            Err(Refused::Status(code)) => last = format!("the receiver answered {code}"),
            Err(Refused::Transport(e)) => last = e,
        }
    }
    Err(format!(
        "not delivered after {attempts} attempt(s): {}",
        redact(&last)
    ))
}

/// Server errors, timeouts and rate limits may pass on a later attempt; other answers not.
fn retryable(code: u16) -> bool {
    code >= 500 || code == 408 || code == 429
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, RunInfo};

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let waits: Vec<u128> = (0..6).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000]);
    }

    #[test]
    fn a_silent_receiver_times_out_and_the_error_leaves_the_url_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:18168").unwrap();
        let url = "http://127.0.0.1:18168/hook/secret-token";
        let delivery = Delivery {
            timeout_seconds: 1,
            retries: 1,
        };

        let err =
            with_retries(delivery, |agent| attempt(agent.post(url).send_string("{}"))).unwrap_err();
        drop(listener);

        assert!(err.contains("after 2 attempt(s)"), "{err}");
        assert!(err.contains("timed out"), "{err}");
        assert!(!err.contains("secret-token"), "{err}");
    }

    #[test]
    fn only_server_errors_and_limits_are_retried() {
        assert!(retryable(500) && retryable(503) && retryable(429) && retryable(408));
        assert!(!retryable(400) && !retryable(401) && !retryable(404));
    }

    #[test]
    fn ntfy_failures_are_urgent_and_headers_are_one_line() {
        let config: NtfyConfig =
            serde_yaml::from_str("{url: 'http://h/t', title: \"two\\nlines\", tags: [a, b]}")
                .unwrap();
        let run = RunInfo {
            action: "deploy".into(),
            deploy_id: "d".into(),
            environment: "prod".into(),
            app: "events".into(),
        };
        let failed = Event::new(Kind::RunFailed, &run, 1);
        let (title, priority, tags, body) = ntfy_parts(&config, &failed);
        assert_eq!(title, "two lines");
        assert_eq!(priority, 4);
        assert_eq!(tags, "a,b");
        assert_eq!(body, "events prod: deploy failed");

        let started = Event::new(Kind::RunStarted, &run, 0);
        assert_eq!(ntfy_parts(&config, &started).1, 3);
    }
}
