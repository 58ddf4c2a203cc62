//! Health probes, made from inside the environment's nginx container (nodes have no curl):
//! straight to a color's app to gate a switch, and through nginx to verify it.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Deserialize;

use crate::host::Input;
use crate::node::{quote, Node};

/// The app's health document (the parts slipway reads).
#[derive(Debug, Clone, Deserialize, Default, serde::Serialize)]
pub struct Report {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub git_commit: String,
    /// The schema version the app reads from `schema_migrations`; a negative one
    /// (golang-migrate's "no version", -1) reads as none.
    #[serde(default, deserialize_with = "non_negative")]
    pub schema_version: Option<u64>,
}

fn non_negative<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value: Option<i64> = Option::deserialize(d)?;
    Ok(value.and_then(|v| u64::try_from(v).ok()))
}

/// Why the schema an app reports after a deploy is not good enough, if it is not: older
/// than the release's newest migration (`expected`). `database` is what
/// `schema_migrations` holds, to tell a stale app from a database that lags.
pub fn schema_problem(
    expected: Option<u64>,
    reported: Option<u64>,
    database: Option<u64>,
) -> Option<String> {
    let expected = expected?;
    let reported = reported?;
    if reported >= expected {
        return None;
    }

    let show = |v: Option<u64>| v.map_or("no version".into(), |v| v.to_string());
    let next = if database.is_some_and(|d| d >= expected) {
        "the database has it, so the app reads another database or a stale view of it: \
         check its database settings, then deploy again"
    } else {
        "the database lacks the release's migrations: check that the playbook runs the \
         `migrate` step and see `slipway migrate status`, then deploy again"
    };
    Some(format!(
        "the app reports schema version {reported}, older than the {expected} the release \
         expects (database: {}); {next}",
        show(database)
    ))
}

/// One probe's result.
#[derive(Debug, Clone)]
pub struct Probe {
    pub http_status: u16,
    pub report: Option<Report>,
    pub error: Option<String>,
}

impl Probe {
    pub fn is_healthy(&self) -> bool {
        self.http_status == 200
            && self
                .report
                .as_ref()
                .is_some_and(|r| r.status == "healthy" || r.status == "degraded")
    }

    pub fn describe(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        match &self.report {
            Some(r) => format!(
                "HTTP {} status={} version={}",
                self.http_status, r.status, r.version
            ),
            None => format!(
                "HTTP {} with a body that is not a health document",
                self.http_status
            ),
        }
    }
}

/// GETs `url` from inside the nginx container.
pub async fn probe(node: &Node, url: &str, timeout: Duration) -> anyhow::Result<Probe> {
    let curl = format!(
        "curl -sS -m {} -w '\\n%{{http_code}}' {}",
        timeout.as_secs().max(1),
        quote(url)
    );
    let out = node
        .run(&node.infra_exec("nginx", &curl), Input::None)
        .await?;
    let text = out.stdout();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let http_status = code.trim().parse().unwrap_or(0);

    Ok(Probe {
        http_status,
        report: serde_json::from_str(body).ok(),
        error: (!out.success()).then(|| out.tail(2)),
    })
}

/// The URL of a color's app on the environment's network.
pub fn color_url(node: &Node, color: &str) -> String {
    let h = &node.env.settings.health;
    format!("http://app-{color}:{}{}", h.port, h.path)
}

/// The URL of the health endpoint through nginx, as seen from inside the nginx container.
pub fn nginx_url(node: &Node) -> String {
    format!("http://127.0.0.1:80{}", node.env.settings.health.path)
}

/// Waits until `url` reports healthy with the expected version and commit. Fails at the
/// deadline, or at once when the app container of `color` (if given) is no longer running.
pub async fn wait_for(
    node: &Node,
    url: &str,
    version: &str,
    commit: &str,
    timeout: Duration,
    color: Option<&str>,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let interval = Duration::from_millis(node.env.settings.health.interval_ms.max(100));
    let docker_checked = color.is_some() && node.env.settings.health.container_check.is_some();
    let mut last = String::from("no answer yet");

    while started.elapsed() < timeout {
        let docker = match color.filter(|_| docker_checked) {
            Some(color) => Some(docker_health(node, color).await?),
            None => None,
        };
        if let Some(state) = docker.as_ref().filter(|s| s.status == "unhealthy") {
            bail!(
                "Docker reports the container unhealthy; its health check said: {}",
                state.log
            );
        }

        let probe = probe(node, url, Duration::from_secs(3)).await?;
        if let Some(report) = probe.report.clone().filter(|_| probe.is_healthy()) {
            let docker_ok = docker.as_ref().is_none_or(|s| s.status == "healthy");
            if report.version == version && report.git_commit == commit && docker_ok {
                return Ok(report);
            }
            if let Some(state) = docker.as_ref().filter(|_| !docker_ok) {
                last = format!(
                    "the endpoint answers, but Docker's health state is {} ({})",
                    state.status, state.log
                );
                tokio::time::sleep(interval).await;
                continue;
            }
            last = format!(
                "healthy but reports version {} commit {}, expected {version} {commit}",
                report.version, report.git_commit
            );
        } else {
            last = probe.describe();
        }

        if let Some(color) = color.filter(|_| started.elapsed() > Duration::from_secs(1)) {
            if !container_running(node, color).await? {
                bail!("the container exited; last probe: {last}");
            }
        }
        tokio::time::sleep(interval).await;
    }
    bail!(
        "not healthy after {}s; last probe: {last}",
        timeout.as_secs()
    )
}

/// Docker's view of a container's health.
#[derive(Debug, Clone)]
pub struct DockerHealth {
    /// `starting`, `healthy`, `unhealthy`, or `none` when the container has no check.
    pub status: String,
    /// The output of the latest check, trimmed.
    pub log: String,
}

/// Reads Docker's health state of this environment's app container of `color`.
pub async fn docker_health(node: &Node, color: &str) -> anyhow::Result<DockerHealth> {
    let env = &node.env;
    let format = "{{if .State.Health}}{{.State.Health.Status}}|\
                  {{range .State.Health.Log}}{{.Output}}@@{{end}}{{else}}none|{{end}}";
    let out = node
        .run(
            &format!(
                "docker inspect --format {} $(docker ps -aq --filter label=slipway.app={} \
                 --filter label=slipway.env={} --filter label=slipway.color={} | head -n 1)",
                quote(format),
                quote(&env.settings.app),
                quote(&env.name),
                quote(color)
            ),
            Input::None,
        )
        .await?;
    let text = out.stdout();
    let (status, log) = text.split_once('|').unwrap_or(("none", ""));
    let last = log
        .trim_end()
        .trim_end_matches("@@")
        .rsplit("@@")
        .next()
        .unwrap_or("");
    Ok(DockerHealth {
        status: status.trim().to_string(),
        log: last.trim().chars().take(400).collect(),
    })
}

/// Whether this environment's app container of `color` is running.
pub async fn container_running(node: &Node, color: &str) -> anyhow::Result<bool> {
    let env = &node.env;
    let out = node
        .sh(&format!(
            "docker ps -q --filter status=running --filter label=slipway.app={} \
             --filter label=slipway.env={} --filter label=slipway.color={}",
            quote(&env.settings.app),
            quote(&env.name),
            quote(color)
        ))
        .await?;
    Ok(!out.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_schema_version_of_a_health_document() {
        let report: Report =
            serde_json::from_str(r#"{"status":"healthy","schema_version":4}"#).unwrap();
        assert_eq!(report.schema_version, Some(4));
        let nil: Report =
            serde_json::from_str(r#"{"status":"unhealthy","schema_version":-1}"#).unwrap();
        assert_eq!(nil.schema_version, None);
        let absent: Report = serde_json::from_str(r#"{"status":"healthy"}"#).unwrap();
        assert_eq!(absent.schema_version, None);
    }

    #[test]
    fn an_app_behind_the_release_schema_is_a_problem() {
        assert_eq!(schema_problem(Some(4), Some(4), Some(4)), None);
        assert_eq!(
            schema_problem(Some(4), Some(5), Some(5)),
            None,
            "newer is fine"
        );
        assert_eq!(
            schema_problem(None, Some(1), Some(1)),
            None,
            "no migrations"
        );
        assert_eq!(schema_problem(Some(4), None, Some(4)), None, "not reported");

        let stale = schema_problem(Some(4), Some(3), Some(4)).unwrap();
        assert!(
            stale.contains("reports schema version 3, older than the 4"),
            "{stale}"
        );
        assert!(stale.contains("(database: 4)"), "{stale}");
        assert!(stale.contains("another database"), "{stale}");

        let lagging = schema_problem(Some(4), Some(3), Some(3)).unwrap();
        assert!(lagging.contains("`migrate` step"), "{lagging}");
        let empty = schema_problem(Some(4), Some(0), None).unwrap();
        assert!(empty.contains("(database: no version)"), "{empty}");
    }
}
