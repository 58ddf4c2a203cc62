//! Database snapshots before migrations: `pg_dump -Fc` inside the database container (so the
//! dump is made by the server's own major version), written under a temporary name,
//! checked with `pg_restore --list`, then renamed to `<db>_<UTC timestamp>_<sha7>.dump`.
//! Beside each dump, `<name>.json` records what it was taken at.

use anyhow::{bail, Context};
use chrono::{NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::node::{quote, Node};

/// What a snapshot was taken at, kept beside it as `<name>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub taken_at: String,
    /// The release being deployed, whose migrations were about to run.
    pub before_release: String,
    pub commit: String,
    /// The release that was live when the snapshot was taken.
    pub live_release: Option<String>,
    /// The schema version the dump holds.
    pub schema_version: Option<u64>,
    pub bytes: u64,
}

/// Refuses when the snapshot directory has less free space than the database's size (a
/// custom-format dump is usually smaller, so this errs on the safe side).
pub async fn check_room(node: &Node) -> anyhow::Result<()> {
    let size: u64 = node
        .query("SELECT pg_database_size(current_database());")
        .await?
        .parse()
        .context("pg_database_size is not a number")?;
    let dir = quote(&node.paths.snapshots_dir());
    let df = node
        .sh(&format!("mkdir -p {dir} && df -Pk {dir} | tail -n 1"))
        .await?;
    let free = df
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("cannot read the free space of the snapshot directory")?;
    if free < size {
        bail!(
            "the snapshot would not fit: the database is {size} bytes ({} MB) and {} has only \
             {free} bytes ({} MB) free; free some space there before deploying a migration",
            size >> 20,
            node.paths.snapshots_dir(),
            free >> 20
        );
    }
    Ok(())
}

/// Writes the snapshot's record beside it.
pub async fn record(node: &Node, name: &str, mut meta: Meta) -> anyhow::Result<()> {
    let path = format!("{}/{name}", node.paths.snapshots_dir());
    let size = node.sh(&format!("stat -c %s {}", quote(&path))).await?;
    meta.bytes = size.trim().parse().unwrap_or(0);
    node.write_file(&format!("{path}.json"), serde_json::to_vec(&meta)?, 0o600)
        .await
}

/// Reads a snapshot's record; `None` for a snapshot taken before records existed.
pub async fn meta(node: &Node, name: &str) -> anyhow::Result<Option<Meta>> {
    let path = format!("{}/{name}.json", node.paths.snapshots_dir());
    let text = node.read_file(&path).await?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Takes a snapshot; returns its file name in the node's snapshot directory.
///
/// The dump is made by the pg_dump of the server's own major version, found inside the
/// database container ([`server_pg_dump`]); any pg_dump on the node's PATH is never used.
/// It is written under a hidden `.partial` name, must be non-empty and readable by
/// `pg_restore --list`, and only then is renamed to its final name: a dump that fails or
/// is killed leaves no file under a final name. Leftover partial files of an earlier,
/// killed dump are removed first (the caller holds the environment's lock, so no other
/// dump of this environment is running).
pub async fn take(node: &Node, commit: &str) -> anyhow::Result<String> {
    let db = &node.env.settings.database;
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = format!("{}_{stamp}_{}.dump", db.name, &commit[..7]);
    let pg_dump = server_pg_dump(node)
        .await
        .context("snapshot refused; no migration was run")?;

    let inner = format!(
        "set -e; rm -f /snapshots/.*.partial; tmp=/snapshots/.{name}.partial; \
         trap 'rm -f \"$tmp\"' EXIT; \
         {pg_dump} -Fc --lock-wait-timeout={wait}s -U {user} -d {dbname} -f \"$tmp\"; \
         test -s \"$tmp\"; {pg_restore} --list \"$tmp\" >/dev/null; \
         mv \"$tmp\" /snapshots/{name}; trap - EXIT",
        pg_dump = quote(&pg_dump),
        pg_restore = quote(&sibling(&pg_dump, "pg_restore")),
        user = quote(&db.user),
        dbname = quote(&db.name),
        wait = node.env.settings.snapshot_lock_wait_seconds.max(1),
    );
    let command = node.infra_exec("db", &format!("sh -c {}", quote(&inner)));
    node.sh(&command).await.context(
        "snapshot failed (no file was kept under a snapshot's name); no migration was run",
    )?;
    Ok(name)
}

/// The path, inside the database container, of a pg_dump whose major version is the
/// server's (FC-08): the server's own `bin` directory first (Debian's layout, also the
/// official image's), else whatever `pg_dump` the container's PATH finds. A pg_dump of
/// another major version is refused, naming both versions.
pub async fn server_pg_dump(node: &Node) -> anyhow::Result<String> {
    let server = node
        .query("SELECT current_setting('server_version_num') || '|' || current_setting('server_version');")
        .await
        .context("cannot ask the database server for its version")?;
    let (num, server_text) = server.split_once('|').unwrap_or((&server, &server));
    let major: u32 = num
        .parse::<u32>()
        .context("server_version_num is not a number")?
        / 10_000;

    let probe = format!(
        "for b in /usr/lib/postgresql/{major}/bin/pg_dump \"$(command -v pg_dump)\"; do \
         if [ -x \"$b\" ]; then echo \"$b\"; \"$b\" --version; exit 0; fi; done; exit 44"
    );
    let out = node
        .run(
            &node.infra_exec("db", &format!("sh -c {}", quote(&probe))),
            crate::host::Input::None,
        )
        .await?;
    if out.code == Some(44) {
        bail!(
            "{}: the database container has no pg_dump; the server is PostgreSQL {server_text}; \
             use a database image that ships pg_dump {major}",
            node.name
        );
    }
    if !out.success() {
        bail!(
            "{}: cannot look for pg_dump in the database container: {}",
            node.name,
            out.tail(3)
        );
    }
    let stdout = out.stdout();
    let mut lines = stdout.lines();
    let path = lines.next().unwrap_or_default().trim().to_string();
    let version = lines.next().unwrap_or_default().trim().to_string();
    if dump_major(&version) != Some(major) {
        bail!(
            "{}: pg_dump in the database container is `{version}` ({path}) but the server is \
             PostgreSQL {server_text} (major {major}); a dump by another major version is not \
             trusted, so no snapshot was taken and nothing was migrated; use a database image \
             whose pg_dump is version {major}",
            node.name
        );
    }
    Ok(path)
}

/// `pg_dump (PostgreSQL) 17.5 (Debian 17.5-1)` -> 17; `pg_dump (PostgreSQL) 9.6.24` -> 9.
fn dump_major(version: &str) -> Option<u32> {
    let number = version.split_whitespace().nth(2)?;
    number.split('.').next()?.parse().ok()
}

/// Another program in the same directory as `path`.
pub(crate) fn sibling(path: &str, program: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{program}"),
        None => program.to_string(),
    }
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

    let files: Vec<String> = old
        .iter()
        .flat_map(|f| [format!("{dir}/{f}"), format!("{dir}/{f}.json")])
        .map(|p| quote(&p))
        .collect();
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

    #[test]
    fn reads_the_major_version_of_pg_dump() {
        assert_eq!(
            dump_major("pg_dump (PostgreSQL) 17.5 (Debian 17.5-1)"),
            Some(17)
        );
        assert_eq!(dump_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(dump_major("garbage"), None);
        assert_eq!(
            sibling("/usr/lib/postgresql/17/bin/pg_dump", "pg_restore"),
            "/usr/lib/postgresql/17/bin/pg_restore"
        );
    }
}
