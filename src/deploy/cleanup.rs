//! Cleanup after a successful deploy: app images, stopped containers and bundles of this
//! environment's releases beyond `keep_releases` are removed. The live and previous
//! releases are always kept; volumes, the database and nginx, and anything not recorded in
//! this environment's history are never touched. Files a killed run left half-written
//! (`<release>.partial` bundles, which hold secrets, and `*.tmp-slipway` files) are swept:
//! cleanup runs under the lock, so nothing else can still be writing them.

use std::collections::BTreeSet;

use super::steps::Deploy;
use crate::history::{self, Record};
use crate::host::Input;
use crate::node::quote;

impl Deploy {
    pub(super) async fn cleanup(&mut self) -> anyhow::Result<()> {
        let records = history::read(&self.node).await?;
        let kept = kept_releases(&records, self.node.env.settings.keep_releases);
        let ours: BTreeSet<&str> = records.iter().map(|r| r.release.as_str()).collect();
        let stale: Vec<&str> = ours.into_iter().filter(|r| !kept.contains(r)).collect();

        self.remove_stopped_containers(&kept).await?;
        self.sweep_leftovers().await?;
        if stale.is_empty() {
            return Ok(());
        }
        let removed = self.remove_images(&records, &stale).await?;
        let dirs: Vec<String> = stale
            .iter()
            .map(|r| quote(&self.node.paths.release_dir(r)))
            .collect();
        self.node.sh(&format!("rm -rf {}", dirs.join(" "))).await?;

        if removed > 0 {
            self.info(&format!("cleanup: removed {removed} old image(s)"));
        }
        Ok(())
    }

    /// Stopped app containers of this environment whose release is not kept, and stopped
    /// one-off containers (`docker compose run`) of any release.
    async fn remove_stopped_containers(&self, kept: &[&str]) -> anyhow::Result<()> {
        let env = &self.node.env;
        let listing = self
            .node
            .sh(&format!(
                "docker ps -a --filter status=exited --filter status=created --filter label=slipway.app={} \
                 --filter label=slipway.env={} \
                 --format '{{{{.ID}}}} {{{{.Label \"slipway.release\"}}}} {{{{.Label \"com.docker.compose.oneoff\"}}}}'",
                quote(&env.settings.app),
                quote(&env.name)
            ))
            .await?;
        let ids: Vec<&str> = listing
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (id, release, oneoff) = (fields.next()?, fields.next()?, fields.next());
                (!kept.contains(&release) || oneoff == Some("True")).then_some(id)
            })
            .collect();
        if !ids.is_empty() {
            self.node
                .sh(&format!("docker rm {} >/dev/null", ids.join(" ")))
                .await?;
        }
        Ok(())
    }

    /// Removes what an interrupted run left under temporary names in this environment's
    /// state directory. Snapshot partials are swept by the snapshot step itself.
    async fn sweep_leftovers(&self) -> anyhow::Result<()> {
        let paths = &self.node.paths;
        self.node
            .sh(&format!(
                "rm -rf {releases}/*.partial && \
                 find {base} -maxdepth 3 -type f -name '*.tmp-slipway' -delete",
                releases = quote(&paths.releases_dir()),
                base = quote(paths.base()),
            ))
            .await?;
        Ok(())
    }

    /// Removes the images of `stale` releases; one still used by any container (of any
    /// environment) stays, since `docker rmi` without force refuses it.
    async fn remove_images(&self, records: &[Record], stale: &[&str]) -> anyhow::Result<usize> {
        let mut removed = 0;
        for release in stale {
            let Some(image) = records
                .iter()
                .find(|r| r.release == *release)
                .map(|r| r.image.clone())
            else {
                continue;
            };
            let out = self
                .node
                .run(
                    &format!("docker image rm {} >/dev/null 2>&1", quote(&image)),
                    Input::None,
                )
                .await?;
            if out.success() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The newest `keep` distinct releases that went live (deploys and rollbacks), newest first.
pub fn kept_releases(records: &[Record], keep: usize) -> Vec<&str> {
    let mut kept: Vec<&str> = Vec::new();
    for record in records.iter().rev().filter(|r| r.action != "failed") {
        if !kept.contains(&record.release.as_str()) {
            kept.push(&record.release);
        }
        if kept.len() == keep {
            break;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_live_releases_and_never_failed_ones() {
        let records = [
            Record::sample("deploy", "r1"),
            Record::sample("deploy", "r2"),
            Record::sample("failed", "r3"),
            Record::sample("deploy", "r4"),
            Record::sample("rollback", "r2"),
        ];
        assert_eq!(kept_releases(&records, 2), vec!["r2", "r4"]);
        assert_eq!(kept_releases(&records, 3), vec!["r2", "r4", "r1"]);
    }
}
