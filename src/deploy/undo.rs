//! Putting a node back the way it was after a failed step: traffic back on the old color,
//! the new color removed, and one error that says what failed, where, and what was done.

use std::time::Duration;

use super::steps::Deploy;
use crate::error::Error;
use crate::health;
use crate::switch;

impl Deploy {
    pub(super) async fn undo(&mut self, step: &str, cause: anyhow::Error) -> anyhow::Error {
        if let Some(Error::Locked { .. }) = cause.downcast_ref::<Error>() {
            return cause;
        }
        if step == "migrate_down" {
            return self.down_failed(cause);
        }
        let logs = if self.started_new {
            self.new_color_logs().await
        } else {
            String::new()
        };
        let mut done = Vec::new();

        if self.switched {
            done.push(self.switch_back().await);
        }
        if self.started_new {
            done.push(match self.remove_color(self.new_color).await {
                Ok(()) => format!("the new {} color was removed", self.new_color),
                Err(e) => format!("removing the new {} color failed: {e:#}", self.new_color),
            });
        }
        if done.is_empty() {
            done.push("nothing was switched; traffic stays where it was".into());
        }

        let mut cause_text = format!("{cause:#}");
        if step == "migrate"
            && cause
                .downcast_ref::<super::interrupt::Interrupted>()
                .is_some()
        {
            cause_text.push_str(&format!(
                "; a migration that had started runs on to its end on the node, apart from the \
                 SSH session: see `slipway migrate status {}`",
                self.node.env.name
            ));
        }
        let mut next = hint(step);
        if let Some(lost) = cause.downcast_ref::<crate::lock::Lost>() {
            next = lost.next.clone();
        }
        if !self.node.host.connected() {
            cause_text = format!(
                "the node could not be reached: its SSH connection was lost during the step, \
                 so the undo could not run there; {cause_text}"
            );
            next = "once the node answers again, see what it runs with `slipway status` (the \
                    new color may still be there) and deploy again"
                .into();
        }
        if !logs.is_empty() {
            cause_text.push_str(&format!("\nlast lines of the new container's log:\n{logs}"));
        }
        Error::Step {
            node: self.node.name.clone(),
            step: step.to_string(),
            cause: cause_text,
            outcome: done.join("; "),
            hint: next,
        }
        .into()
    }

    /// A rollback's down files failed after the switch: the release stays live (it was made
    /// to serve on the newer schema), the database is dirty as the message says.
    fn down_failed(&self, cause: anyhow::Error) -> anyhow::Error {
        let release = &self.shared.release.name;
        Error::Step {
            node: self.node.name.clone(),
            step: "migrate_down".into(),
            cause: format!("{cause:#}"),
            outcome: format!(
                "release {release} stays live on the {} color and is recorded as live; the \
                 newer release is stopped; the snapshot taken before the rollback is {}",
                self.new_color,
                self.snapshot.as_deref().unwrap_or("unknown")
            ),
            hint: format!(
                "see `slipway migrate status {env}`, fix the cause, then `slipway migrate \
                 recover {env}` as the message says, and finish with `slipway migrate down {env} \
                 --to {to} --ref <the newer release's commit>`",
                env = self.node.env.name,
                to = self
                    .shared
                    .revert
                    .last()
                    .and_then(|r| r.previous)
                    .unwrap_or(0)
            ),
        }
        .into()
    }

    /// Starts the old color again if it was stopped, and points nginx back at it.
    async fn switch_back(&mut self) -> String {
        let Some(old) = self.old_color.clone() else {
            return match switch::point_nginx(
                &self.node,
                &self.shared.renderer,
                &self.shared.images,
                None,
            )
            .await
            {
                Ok(()) => {
                    let _ = switch::record_active(&self.node, None).await;
                    "there was no previous release; nginx answers 503".into()
                }
                Err(e) => format!("could not take the failed release out of nginx: {e:#}"),
            };
        };

        if self.old_stopped {
            if let Err(e) = self.restart_old(&old).await {
                return format!(
                    "could not restart the old {old} color: {e:#}; traffic is NOT restored"
                );
            }
        }
        match switch::point_nginx(
            &self.node,
            &self.shared.renderer,
            &self.shared.images,
            Some(&old),
        )
        .await
        {
            Ok(()) => {
                let _ = switch::record_active(&self.node, Some(&old)).await;
                format!("traffic is back on the {old} color")
            }
            Err(e) => format!("switching back to {old} failed: {e:#}"),
        }
    }

    async fn restart_old(&self, old: &str) -> anyhow::Result<()> {
        let ids = self.color_containers(old, true).await?;
        anyhow::ensure!(!ids.is_empty(), "its container is gone");
        self.node
            .sh(&format!("docker start {}", ids.join(" ")))
            .await?;

        let url = health::color_url(&self.node, old);
        let deadline = std::time::Instant::now()
            + Duration::from_secs(self.node.env.settings.health.timeout_seconds);
        while std::time::Instant::now() < deadline {
            if health::probe(&self.node, &url, Duration::from_secs(3))
                .await?
                .is_healthy()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("it did not become healthy again")
    }
}

fn hint(step: &str) -> String {
    match step {
        "preflight" => "fix the node as the message says, then deploy again".into(),
        "ship_images" | "upload_bundle" => {
            "check the node's disk and connection, then deploy again".into()
        }
        "ensure_infra" => {
            "look at `docker compose logs` of the database and nginx on the node".into()
        }
        "snapshot" => "check the database container and the snapshot directory's free space".into(),
        "migrate" => {
            "the database is left as the failed migration left it; see the message above".into()
        }
        "health_gate" | "verify" => "fix the release (see its log above) and deploy again".into(),
        _ => "see the cause above, then deploy again".into(),
    }
}
