//! Database snapshots before migrations: `pg_dump -Fc` inside the database container (so the
//! dump is made by the server's own major version), written under a temporary name,
//! checked with `pg_restore --list`, then renamed to `<db>_<UTC timestamp>_<sha7>.dump`.

use anyhow::{bail, Context};
use chrono::{NaiveDateTime, Utc};

use crate::node::{quote, Node};

/// Takes a snapshot; returns its file name in the node's snapshot directory.
pub async fn take(node: &Node, commit: &str) -> anyhow::Result<String> {
    let db = &node.env.settings.database;
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = format!("{}_{stamp}_{}.dump", db.name, &commit[..7]);

    let inner = format!(
        "set -e; tmp=/snapshots/.{name}.partial; trap 'rm -f \"$tmp\"' EXIT; \
         pg_dump -Fc --lock-wait-timeout={wait}s -U {user} -d {dbname} -f \"$tmp\"; \
         test -s \"$tmp\"; pg_restore --list \"$tmp\" >/dev/null; \
         mv \"$tmp\" /snapshots/{name}; trap - EXIT",
        user = quote(&db.user),
        dbname = quote(&db.name),
        wait = node.env.settings.snapshot_lock_wait_seconds.max(1),
    );
    let command = node.infra_compose(&format!("exec -T db sh -c {}", quote(&inner)));
    node.sh(&command)
        .await
        .context("snapshot failed; no migration was run")?;
    Ok(name)
}

/// Removes snapshots older than the retention, never the newest one.
pub async fn prune(node: &Node) -> anyhow::Result<Vec<String>> {
    let dir = node.paths.snapshots_dir();
    let listing = node
        .sh(&format!("mkdir -p {q} && ls -1 {q}", q = quote(&dir)))
        .await?;

    let mut dated: Vec<(NaiveDateTime, String)> = listing
        .lines()
        .filter_map(|f| stamp_of(f).map(|t| (t, f.to_string())))
        .collect();
    dated.sort();
    dated.pop();

    let keep_days = node.env.settings.snapshot_retention_days as i64;
    let cutoff = Utc::now().naive_utc() - chrono::Duration::days(keep_days);
    let old: Vec<String> = dated
        .into_iter()
        .filter(|(t, _)| *t < cutoff)
        .map(|(_, f)| f)
        .collect();
    if old.is_empty() {
        return Ok(old);
    }

    let files: Vec<String> = old.iter().map(|f| quote(&format!("{dir}/{f}"))).collect();
    node.sh(&format!("rm -f {}", files.join(" "))).await?;
    Ok(old)
}

/// `events_20261203T101500Z_abc1234.dump` -> its timestamp.
fn stamp_of(file: &str) -> Option<NaiveDateTime> {
    let stem = file.strip_suffix(".dump")?;
    let mut parts = stem.rsplitn(3, '_');
    let _sha = parts.next()?;
    let stamp = parts.next()?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()
}

/// Lists snapshot files, oldest first.
pub async fn list(node: &Node) -> anyhow::Result<Vec<String>> {
    let dir = quote(&node.paths.snapshots_dir());
    let listing = node
        .sh(&format!("[ -d {dir} ] || exit 0; ls -1 {dir}"))
        .await?;
    let mut files: Vec<String> = listing
        .lines()
        .filter(|f| stamp_of(f).is_some())
        .map(String::from)
        .collect();
    files.sort_by_key(|f| stamp_of(f));
    Ok(files)
}

/// Fails unless the snapshot file exists on the node and is not empty.
pub async fn verify_present(node: &Node, name: &str) -> anyhow::Result<()> {
    let path = quote(&format!("{}/{name}", node.paths.snapshots_dir()));
    let out = node
        .run(&format!("test -s {path}"), crate::host::Input::None)
        .await?;
    if !out.success() {
        bail!("snapshot {name} is missing or empty on the node");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timestamp_from_a_snapshot_name() {
        let t = stamp_of("my_db_20261203T101500Z_abc1234.dump").unwrap();
        assert_eq!(t.to_string(), "2026-12-03 10:15:00");
        assert!(stamp_of(".events_20261203T101500Z_abc1234.dump.partial").is_none());
    }
}
