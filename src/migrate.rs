//! Migrations in golang-migrate's layout and bookkeeping.
//!
//! Files: `migrations/NNNNNN_name.up.sql` and `.down.sql`, read from the release's commit.
//! State: the one-row table `schema_migrations (version bigint primary key, dirty boolean)`.
//! golang-migrate's "no version" (`NilVersion`, -1), which it writes with `dirty = true`
//! after a failed down migration of the first file, reads as no version.
//! A run holds golang-migrate's advisory lock for the database, and for each pending file
//! marks the version dirty, runs the file in one transaction, then marks it clean, so either
//! tool can continue after the other. A file whose version is already recorded by the time
//! the lock is held is skipped, so two migrators never apply the same file twice.
//!
//! A file whose first line is [`NO_TRANSACTION`] runs outside a transaction (for
//! `CREATE INDEX CONCURRENTLY` and the like), between the same dirty and clean marks; such a
//! file must hold exactly one statement (checked by `crate::lint` before anything runs).
//!
//! Down migrations ([`plan_down`], [`down_script`], [`revert`]) only run when asked for
//! (`slipway migrate down`, `slipway rollback --migrate-down`), with the down files of one
//! named commit. Every version to revert, from the recorded one down to (not including) the
//! target, must have a down file there that holds a statement; a missing or empty one (only
//! whitespace and comments) refuses the whole run before anything changes. The run holds
//! the same advisory lock and session timeouts as an up run and refuses a dirty table. For
//! each version `v`, newest first: check that the table still records `v` (clean), mark `v`
//! dirty, run `v`'s down file in one transaction (or bare, one statement, when it carries
//! the marker), then record the next lower version among the commit's files as clean; when
//! no file is left the table is emptied, which is how golang-migrate writes its clean
//! `NilVersion`. One difference from golang-migrate: during a down it marks the *target*
//! version dirty, slipway marks the version being reverted, so a failed down reads like a
//! failed up (`migrate recover --to v` if the down file did not take effect, `--to` the
//! version before it if it did); golang-migrate's `force` accepts either state.

use std::path::Path;

use anyhow::{bail, Context};
use tokio::process::Command;

use crate::config::Migrations;
use crate::detached::{self, Job, Say};
use crate::error::Error;
use crate::node::Node;

/// The first line of a migration file that must run outside a transaction.
pub const NO_TRANSACTION: &str = "-- slipway:no-transaction";

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: u64,
    pub name: String,
    /// The up file's name, e.g. `000004_add_capacity.up.sql`.
    pub file: String,
    pub up: String,
    /// The down file's statements, when the commit has one beside the up file.
    pub down: Option<String>,
}

impl Migration {
    /// Whether the file declares itself non-transactional on its first line.
    pub fn transactional(&self) -> bool {
        self.up.lines().next().map(str::trim) != Some(NO_TRANSACTION)
    }

    /// The file's path in the repository, for messages.
    pub fn path(&self) -> String {
        format!("migrations/{}", self.file)
    }

    /// The down file's name: `000004_add_capacity.down.sql`.
    pub fn down_file(&self) -> String {
        let stem = self.file.strip_suffix(".up.sql").unwrap_or(&self.file);
        format!("{stem}.down.sql")
    }

    /// The down file as a file to run: its statements stand where an up file's do, so the
    /// shape check and the runner treat both alike.
    fn reverse(&self) -> Option<Migration> {
        Some(Migration {
            version: self.version,
            name: self.name.clone(),
            file: self.down_file(),
            up: self.down.clone()?,
            down: None,
        })
    }
}

/// What `schema_migrations` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchemaState {
    pub version: Option<u64>,
    pub dirty: bool,
}

/// The schema a release expects: the highest version among its migration files.
pub fn expected(migrations: &[Migration]) -> Option<u64> {
    migrations.iter().map(|m| m.version).max()
}

/// Reads the migration files of `commit` from the repository.
pub async fn load(root: &Path, commit: &str) -> anyhow::Result<Vec<Migration>> {
    let listing = git(
        root,
        &["ls-tree", "--name-only", &format!("{commit}:migrations")],
    )
    .await;
    let Ok(listing) = listing else {
        return Ok(Vec::new());
    };

    let files: Vec<&str> = listing.lines().collect();
    let mut migrations = Vec::new();
    for file in files.iter().copied() {
        let Some((version, name)) = parse_name(file, ".up.sql") else {
            continue;
        };
        if migrations.iter().any(|m: &Migration| m.version == version) {
            bail!("migrations/{file}: version {version} appears twice");
        }
        let up = git(root, &["show", &format!("{commit}:migrations/{file}")]).await?;
        let mut migration = Migration {
            version,
            name,
            file: file.to_string(),
            up,
            down: None,
        };
        let down_file = migration.down_file();
        if files.contains(&down_file.as_str()) {
            let path = format!("{commit}:migrations/{down_file}");
            migration.down = Some(git(root, &["show", &path]).await?);
        }
        migrations.push(migration);
    }
    migrations.sort_by_key(|m| m.version);
    Ok(migrations)
}

/// Whether `commit` names a commit of the repository at `root`.
pub async fn has_commit(root: &Path, commit: &str) -> bool {
    let object = format!("{commit}^{{commit}}");
    git(root, &["cat-file", "-e", &object]).await.is_ok()
}

/// `000003_seed.up.sql` -> (3, "seed").
fn parse_name(file: &str, suffix: &str) -> Option<(u64, String)> {
    let stem = file.strip_suffix(suffix)?;
    let (digits, name) = stem.split_once('_')?;
    let version = digits.parse().ok()?;
    Some((version, name.to_string()))
}

/// The migrations newer than the database's version.
pub fn pending(all: &[Migration], state: SchemaState) -> Vec<Migration> {
    all.iter()
        .filter(|m| state.version.is_none_or(|v| m.version > v))
        .cloned()
        .collect()
}

/// Reads `schema_migrations`; an absent table means nothing was ever applied. One psql
/// run: the row is only asked for when the table exists.
pub async fn state(node: &Node) -> anyhow::Result<SchemaState> {
    let row = node.query(STATE_SQL).await?;
    parse_row(&row)
}

const STATE_SQL: &str = r"SELECT (to_regclass('public.schema_migrations') IS NOT NULL)::int AS has_table \gset
\if :has_table
SELECT version || '|' || dirty FROM schema_migrations LIMIT 1;
\endif
";

/// `version|dirty` as psql prints it; an empty answer (no row) is no version. A negative
/// version is golang-migrate's `NilVersion` (-1): no version, with whatever dirty flag.
fn parse_row(row: &str) -> anyhow::Result<SchemaState> {
    let Some((version, dirty)) = row.trim().split_once('|') else {
        return Ok(SchemaState::default());
    };
    let version: i64 = version
        .parse()
        .with_context(|| format!("schema_migrations.version `{version}` is not a number"))?;
    Ok(SchemaState {
        version: u64::try_from(version).ok(),
        dirty: dirty == "true" || dirty == "t",
    })
}

/// golang-migrate v4's advisory lock key for the postgres driver: its postgres `Lock` calls
/// `GenerateAdvisoryLockId(database, schema, table)`, which joins the extra names first and
/// the database last (`schema \0 table \0 database`), takes the IEEE CRC-32, times the salt
/// 1486364155, wrapped to an unsigned 32-bit number. (Releases before v4 put the database
/// first; slipway follows v4.) slipway's table is always `public.schema_migrations`.
pub fn advisory_lock_key(database: &str) -> u32 {
    let name = format!("public\0schema_migrations\0{database}");
    crc32fast::hash(name.as_bytes()).wrapping_mul(1_486_364_155)
}

/// The database session holding the migration advisory lock, described, if one does: a
/// migration still running, perhaps left by an operation that ended (its psql goes on on
/// the node after slipway is killed or its connection drops).
pub async fn running_migrator(node: &Node) -> anyhow::Result<Option<String>> {
    let key = advisory_lock_key(&node.env.settings.database.name);
    let sql = format!(
        "SELECT format('session pid %s, running %s s: %s', a.pid, \
         extract(epoch FROM now() - a.query_start)::int, left(a.query, 120)) \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objsubid = 1 \
         AND l.objid::bigint = {key} \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         LIMIT 1;"
    );
    let row = node.query(&sql).await?;
    Ok((!row.is_empty()).then_some(row))
}

/// The psql script that applies `pending` under the advisory lock. The session's lock and
/// statement timeouts are set once the advisory lock is held (waiting for another migrator
/// is not a lock to give up on).
pub fn script(pending: &[Migration], database: &str, limits: &Migrations) -> String {
    let key = advisory_lock_key(database);
    let mut sql = format!(
        "SELECT pg_advisory_lock({key});\n\
         SET lock_timeout = {lock};\n\
         SET statement_timeout = {statement};\n\
         CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);\n\
         DO $$ BEGIN IF EXISTS (SELECT 1 FROM schema_migrations WHERE dirty) THEN \
         RAISE EXCEPTION 'slipway: schema_migrations is dirty'; END IF; END $$;\n",
        lock = limits.lock_timeout_ms,
        statement = limits.statement_timeout_seconds * 1000,
    );

    for m in pending {
        let v = m.version;
        sql.push_str(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version >= {v}) AS todo \\gset\n\
             \\if :todo\n\
             \\echo slipway-migrate-start {v}\n\
             BEGIN; DELETE FROM schema_migrations; INSERT INTO schema_migrations VALUES ({v}, true); COMMIT;\n\
             {body}\n\
             BEGIN; DELETE FROM schema_migrations; INSERT INTO schema_migrations VALUES ({v}, false); COMMIT;\n\
             \\echo slipway-migrate-done {v}\n\
             \\endif\n",
            body = body(m)
        ));
    }
    sql.push_str(&format!("SELECT pg_advisory_unlock({key});\n"));
    sql
}

/// A file's statements: wrapped in one transaction, or bare when it declares itself
/// non-transactional (psql then runs its one statement in autocommit mode).
fn body(m: &Migration) -> String {
    let text = m.up.trim_end();
    if m.transactional() {
        format!("BEGIN;\n{text}\n;\nCOMMIT;")
    } else {
        format!("{text}\n;")
    }
}

/// Records `to` as the clean version, under the advisory lock, only while the database is
/// still dirty at `dirty` (`None`: golang-migrate's dirty `NilVersion` row, -1; `to` 0: no
/// version at all). Runs no migration.
pub async fn force_clean(node: &Node, dirty: Option<u64>, to: u64) -> anyhow::Result<()> {
    let key = advisory_lock_key(&node.env.settings.database.name);
    let (dirty, shown) = match dirty {
        Some(v) => (v.to_string(), v.to_string()),
        None => ("-1".to_string(), "-1 (no version)".to_string()),
    };
    let record = if to == 0 {
        String::new()
    } else {
        format!("INSERT INTO schema_migrations VALUES ({to}, false);")
    };
    let sql = format!(
        "SELECT pg_advisory_lock({key});\n\
         BEGIN;\n\
         DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version = {dirty} \
         AND dirty) THEN RAISE EXCEPTION 'slipway: schema_migrations is no longer dirty at \
         {shown}'; END IF; END $$;\n\
         DELETE FROM schema_migrations; {record}\n\
         COMMIT;\n\
         SELECT pg_advisory_unlock({key});\n"
    );
    let out = node.psql(&sql, "").await?;
    if !out.success() {
        bail!("recording version {to} failed: {}", out.tail(4));
    }
    Ok(())
}

/// Applies the pending migrations; returns the versions this run applied.
///
/// psql runs on the node apart from the SSH session (see `crate::detached`): a connection
/// lost meanwhile does not cut the script short; the tool reconnects and reads back what
/// the run did, telling `say` about the loss and the return.
pub async fn apply(node: &Node, pending: &[Migration], say: Say<'_>) -> anyhow::Result<Vec<u64>> {
    crate::lint::check_shape(pending)?;

    let settings = &node.env.settings;
    let sql = script(pending, &settings.database.name, &settings.migrations);
    let job = Job {
        step: "migrate",
        what: "the migration",
        check: format!("slipway migrate status {}", node.env.name),
    };
    let out = detached::run(node, &job, &node.psql_command(""), sql.into_bytes(), say).await?;

    let applied = out
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("slipway-migrate-done "))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if out.success() {
        return Ok(applied);
    }

    let started: Option<u64> = out
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("slipway-migrate-start "))
        .filter_map(|v| v.trim().parse().ok())
        .next_back();
    let cause = match timed_out(&out.tail(6), &settings.migrations) {
        Some(limit) => format!("{limit}; {}", blockers(node).await),
        None => out.tail(6),
    };
    match started {
        Some(v) => bail!(
            "migration {v} failed and the database is now marked dirty at version {v} ({}): \
             {cause}",
            leftover(pending, v)
        ),
        None => bail!("migrations could not start: {cause}"),
    }
}

/// One version a down run reverts.
#[derive(Debug, Clone)]
pub struct Revert {
    /// The down file, as a file to run (see [`Migration::reverse`]).
    pub file: Migration,
    /// The version recorded once it is reverted: the next lower file's; `None` when no
    /// file is left (the table is emptied).
    pub previous: Option<u64>,
}

impl Revert {
    pub fn version(&self) -> u64 {
        self.file.version
    }
}

/// Where the down files come from, for messages: the commit and what to do about a
/// file that is not there.
pub struct DownSource<'a> {
    pub commit: &'a str,
    pub fix: &'a str,
}

/// The versions to revert to reach `to`, newest first: from the recorded version down to,
/// not including, `to` (0: every file). Refuses, changing nothing, when the recorded
/// version is not a file of `files`, when `to` is neither 0 nor one of them, or when a down
/// file is missing, empty (only whitespace and comments) or shaped wrong. The caller
/// refuses a dirty state first.
pub fn plan_down(
    files: &[Migration],
    state: SchemaState,
    to: u64,
    source: &DownSource,
) -> Result<Vec<Revert>, Error> {
    let Some(current) = state.version.filter(|v| *v > to) else {
        return Ok(Vec::new());
    };
    let short = &source.commit[..7.min(source.commit.len())];
    let versions: Vec<String> = files.iter().map(|m| m.version.to_string()).collect();
    if !files.iter().any(|m| m.version == current) {
        return Err(Error::config(
            format!("migrations/ at commit {short}"),
            format!(
                "the database records version {current}, but commit {} has no migration \
                 {current} (it has {}), so nothing can revert it; nothing was changed",
                source.commit,
                versions.join(", ")
            ),
            source.fix,
        ));
    }
    if to != 0 && !files.iter().any(|m| m.version == to) {
        return Err(Error::config(
            "--to",
            format!(
                "version {to} is not a migration of commit {} (it has {}); nothing was changed",
                source.commit,
                versions.join(", ")
            ),
            "pass one of those versions, or 0 to revert every file",
        ));
    }

    let chosen: Vec<&Migration> = files
        .iter()
        .rev()
        .filter(|m| m.version > to && m.version <= current)
        .collect();
    check_down_files(&chosen, source)?;

    let reverts: Vec<Revert> = chosen
        .iter()
        .filter_map(|m| m.reverse())
        .map(|file| Revert {
            previous: files
                .iter()
                .map(|m| m.version)
                .filter(|v| *v < file.version)
                .max(),
            file,
        })
        .collect();
    let downs: Vec<Migration> = reverts.iter().map(|r| r.file.clone()).collect();
    crate::lint::check_shape(&downs).map_err(|e| {
        Error::config(
            format!("migrations/ at commit {short}"),
            format!("{e:#}; nothing was changed"),
            source.fix,
        )
    })?;
    Ok(reverts)
}

/// Every chosen file has a down file that holds a statement; else one error naming each
/// that does not.
fn check_down_files(chosen: &[&Migration], source: &DownSource) -> Result<(), Error> {
    let problems: Vec<(String, &str)> = chosen
        .iter()
        .filter_map(|m| match &m.down {
            None => Some((format!("migrations/{}", m.down_file()), "is missing")),
            Some(text) if holds_no_statement(text) => Some((
                format!("migrations/{}", m.down_file()),
                "is empty (only whitespace or comments)",
            )),
            Some(_) => None,
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let files: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
    let what: Vec<String> = problems
        .iter()
        .map(|(f, why)| format!("{f} {why}"))
        .collect();
    Err(Error::config(
        files.join(", "),
        format!(
            "{} in commit {}, so the schema cannot be reverted; nothing was changed",
            what.join("; "),
            source.commit
        ),
        source.fix,
    ))
}

/// Whether SQL text holds nothing but whitespace, `--` comments and `/* */` comments.
fn holds_no_statement(sql: &str) -> bool {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(after) = rest.strip_prefix("/*") {
            match after.split_once("*/") {
                Some((_, next)) => rest = next,
                None => return true,
            }
        } else {
            return rest.is_empty();
        }
    }
}

/// The psql script that reverts `reverts` (newest first) under the advisory lock, with the
/// same session limits as [`script`]. Each version must still be the recorded, clean one
/// when its turn comes; otherwise the script stops there.
pub fn down_script(reverts: &[Revert], database: &str, limits: &Migrations) -> String {
    let key = advisory_lock_key(database);
    let mut sql = format!(
        "SELECT pg_advisory_lock({key});\n\
         SET lock_timeout = {lock};\n\
         SET statement_timeout = {statement};\n\
         DO $$ BEGIN IF EXISTS (SELECT 1 FROM schema_migrations WHERE dirty) THEN \
         RAISE EXCEPTION 'slipway: schema_migrations is dirty'; END IF; END $$;\n",
        lock = limits.lock_timeout_ms,
        statement = limits.statement_timeout_seconds * 1000,
    );

    for r in reverts {
        let v = r.version();
        let record = r.previous.map_or(String::new(), |p| {
            format!(" INSERT INTO schema_migrations VALUES ({p}, false);")
        });
        sql.push_str(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version = {v} \
             AND NOT dirty) THEN RAISE EXCEPTION 'slipway: schema_migrations no longer records \
             version {v}'; END IF; END $$;\n\
             BEGIN; DELETE FROM schema_migrations; INSERT INTO schema_migrations VALUES ({v}, true); COMMIT;\n\
             \\echo slipway-down-start {v}\n\
             {body}\n\
             BEGIN; DELETE FROM schema_migrations;{record} COMMIT;\n\
             \\echo slipway-down-done {v}\n",
            body = body(&r.file)
        ));
    }
    sql.push_str(&format!("SELECT pg_advisory_unlock({key});\n"));
    sql
}

/// Runs the planned down files; returns the versions this run reverted. A failure names
/// the version left dirty, the database's error and the way out.
pub async fn revert(node: &Node, reverts: &[Revert]) -> anyhow::Result<Vec<u64>> {
    let settings = &node.env.settings;
    let sql = down_script(reverts, &settings.database.name, &settings.migrations);
    let out = node.psql(&sql, "").await?;

    let stdout = out.stdout();
    let marked = |prefix: &str| -> Vec<u64> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    let reverted = marked("slipway-down-done ");
    if out.success() {
        return Ok(reverted);
    }

    let cause = match timed_out(&out.tail(6), &settings.migrations) {
        Some(limit) => format!("{limit}; {}", blockers(node).await),
        None => out.tail(6),
    };
    let started = marked("slipway-down-start ").last().copied();
    let Some(v) = started.filter(|v| !reverted.contains(v)) else {
        bail!(
            "the down migrations stopped before marking a version dirty (reverted so far: \
             {reverted:?}); the table is clean: {cause}"
        );
    };
    let files: Vec<Migration> = reverts.iter().map(|r| r.file.clone()).collect();
    let previous = reverts
        .iter()
        .find(|r| r.version() == v)
        .and_then(|r| r.previous)
        .unwrap_or(0);
    bail!(
        "down migration {v} failed and the database is now marked dirty at version {v} ({}): \
         {cause}\nreverted before it: {reverted:?}. Once the cause is fixed, record what the \
         database holds with `slipway migrate recover {env} --to {v} --yes` (its down file did \
         not take effect) or `--to {previous}` (it did), then run the down again",
        leftover(&files, v),
        env = node.env.name,
    )
}

/// What a failed file left behind, by how it ran.
fn leftover(pending: &[Migration], version: u64) -> &'static str {
    let transactional = pending
        .iter()
        .find(|m| m.version == version)
        .is_none_or(Migration::transactional);
    if transactional {
        "its transaction was rolled back"
    } else {
        "it ran outside a transaction: a failed CREATE INDEX CONCURRENTLY leaves an INVALID \
         index behind, which must be dropped before the file runs again"
    }
}

/// Which session limit cut a statement short, judging by Postgres's message.
fn timed_out(message: &str, limits: &Migrations) -> Option<String> {
    if message.contains("canceling statement due to lock timeout") {
        Some(format!(
            "it waited {} ms for a lock (migrations.lock_timeout_ms) and gave up, so the \
             live app was not queued behind it",
            limits.lock_timeout_ms
        ))
    } else if message.contains("canceling statement due to statement timeout") {
        Some(format!(
            "a statement ran longer than {} s (migrations.statement_timeout_seconds)",
            limits.statement_timeout_seconds
        ))
    } else {
        None
    }
}

/// The other sessions in an open transaction, oldest first: whoever held the lock.
async fn blockers(node: &Node) -> String {
    let sql = "SELECT string_agg(format('pid %s (%s, %s, %s, transaction open %s s): %s', \
               pid, usename, coalesce(nullif(application_name, ''), 'no name'), state, \
               extract(epoch FROM now() - xact_start)::int, left(query, 160)), E'\\n' \
               ORDER BY xact_start) FROM pg_stat_activity \
               WHERE pid <> pg_backend_pid() AND datname = current_database() \
               AND xact_start IS NOT NULL;";
    match node.query(sql).await {
        Ok(list) if !list.trim().is_empty() => format!(
            "sessions with an open transaction, oldest first (the blocker is among them; end \
             it or wait for it):\n{list}"
        ),
        Ok(_) => "no session holds a transaction open any more".into(),
        Err(e) => format!("the sessions could not be listed: {e:#}"),
    }
}

async fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(version: u64) -> Migration {
        Migration {
            version,
            name: format!("m{version}"),
            file: format!("{version:06}_m{version}.up.sql"),
            up: "SELECT 1;".into(),
            down: None,
        }
    }

    #[test]
    fn parses_golang_migrate_names() {
        assert_eq!(
            parse_name("000012_add_index.up.sql", ".up.sql"),
            Some((12, "add_index".into()))
        );
        assert_eq!(parse_name("000012_add_index.down.sql", ".up.sql"), None);
        assert_eq!(parse_name("README.md", ".up.sql"), None);
    }

    #[test]
    fn pending_is_everything_after_the_recorded_version() {
        let all = [m(1), m(2), m(3)];
        let none = pending(&all, SchemaState::default());
        assert_eq!(none.len(), 3);

        let two = pending(
            &all,
            SchemaState {
                version: Some(2),
                dirty: false,
            },
        );
        assert_eq!(two.iter().map(|m| m.version).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn lock_key_matches_golang_migrate() {
        // Worked out apart from this code, with Python's zlib:
        // crc32(b"public\0schema_migrations\0events") = 3597690553, and
        // 3597690553 * 1486364155 mod 2^32 = 2444209251.
        assert_eq!(advisory_lock_key("events"), 2_444_209_251);
        assert_ne!(advisory_lock_key("events"), advisory_lock_key("other"));
    }

    #[test]
    fn reads_golang_migrate_nil_version_as_no_version() {
        let nil = parse_row("-1|true").unwrap();
        assert_eq!(
            nil,
            SchemaState {
                version: None,
                dirty: true
            }
        );
        assert_eq!(parse_row("-1|false").unwrap(), SchemaState::default());
        assert_eq!(parse_row("").unwrap(), SchemaState::default());
        let seven = parse_row("7|f\n").unwrap();
        assert_eq!(seven.version, Some(7));
        assert!(!seven.dirty);
        assert!(parse_row("x|t").is_err());
    }

    #[test]
    fn a_release_expects_its_highest_migration() {
        assert_eq!(expected(&[m(3), m(12), m(4)]), Some(12));
        assert_eq!(expected(&[]), None);
    }

    #[test]
    fn script_guards_each_version() {
        let limits = Migrations {
            lock_timeout_ms: 2500,
            statement_timeout_seconds: 60,
            ..Migrations::default()
        };
        let sql = script(&[m(4)], "events", &limits);
        assert!(sql.contains("WHERE version >= 4) AS todo"));
        assert!(sql.contains("VALUES (4, true)"));
        assert!(sql.contains("VALUES (4, false)"));
        let at = |text: &str| sql.find(text).unwrap();
        assert!(at("pg_advisory_lock") < at("SET lock_timeout = 2500;"));
        assert!(at("SET statement_timeout = 60000;") < at("VALUES (4, true)"));
    }

    fn with_down(version: u64, down: Option<&str>) -> Migration {
        Migration {
            down: down.map(String::from),
            ..m(version)
        }
    }

    fn at(version: u64) -> SchemaState {
        SchemaState {
            version: Some(version),
            dirty: false,
        }
    }

    const SOURCE: DownSource = DownSource {
        commit: "0123456789abcdef",
        fix: "add it",
    };

    #[test]
    fn plans_the_versions_above_the_target_newest_first() {
        let files = [
            with_down(3, Some("DROP TABLE a;")),
            with_down(7, Some("DROP TABLE b;")),
            with_down(9, Some("ALTER TABLE c DROP COLUMN d;")),
        ];
        let plan = plan_down(&files, at(9), 3, &SOURCE).unwrap();
        let steps: Vec<(u64, Option<u64>)> =
            plan.iter().map(|r| (r.version(), r.previous)).collect();
        assert_eq!(steps, [(9, Some(7)), (7, Some(3))]);
        assert_eq!(plan[0].file.file, "000009_m9.down.sql");
        assert_eq!(plan[0].file.up, "ALTER TABLE c DROP COLUMN d;");

        let all = plan_down(&files, at(9), 0, &SOURCE).unwrap();
        assert_eq!(
            all.last().map(|r| (r.version(), r.previous)),
            Some((3, None))
        );
        assert!(plan_down(&files, at(7), 7, &SOURCE).unwrap().is_empty());
        assert!(plan_down(&files, at(3), 7, &SOURCE).unwrap().is_empty());
        assert!(plan_down(&files, SchemaState::default(), 0, &SOURCE)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_missing_or_empty_down_file_refuses_the_plan_naming_each() {
        let files = [
            with_down(3, None),
            with_down(7, Some("-- nothing to undo\n/* really */\n  \n")),
            with_down(9, None),
        ];
        let err = plan_down(&files, at(9), 3, &SOURCE).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INVALID);
        let text = format!("{err} {}", err.hints().join(" "));
        assert!(
            text.contains("migrations/000009_m9.down.sql is missing"),
            "{text}"
        );
        assert!(
            text.contains("migrations/000007_m7.down.sql is empty"),
            "{text}"
        );
        assert!(!text.contains("000003"), "3 stays applied: {text}");
        assert!(text.contains("commit 0123456789abcdef"), "{text}");
        assert!(text.contains("fix: add it"), "{text}");
    }

    #[test]
    fn refuses_a_version_the_commit_has_no_file_for() {
        let files = [with_down(3, Some("DROP TABLE a;"))];
        let newer = plan_down(&files, at(5), 0, &SOURCE).unwrap_err();
        assert!(newer.to_string().contains("no migration 5"), "{newer}");
        let target = plan_down(&files, at(3), 2, &SOURCE).unwrap_err();
        assert!(
            target.to_string().contains("version 2 is not a migration"),
            "{target}"
        );
    }

    #[test]
    fn a_down_file_with_the_marker_holds_one_statement() {
        let two =
            format!("{NO_TRANSACTION}\nDROP INDEX CONCURRENTLY a;\nDROP INDEX CONCURRENTLY b;\n");
        let files = [with_down(4, Some(&two))];
        let err = plan_down(&files, at(4), 0, &SOURCE).unwrap_err();
        assert!(err.to_string().contains("000004_m4.down.sql"), "{err}");
    }

    #[test]
    fn comments_and_whitespace_hold_no_statement() {
        assert!(holds_no_statement(""));
        assert!(holds_no_statement(" \n-- a\n/* b\n c */ -- d"));
        assert!(!holds_no_statement("-- a\nDROP TABLE x;"));
        assert!(!holds_no_statement("/* a */ SELECT 1"));
    }

    #[test]
    fn down_script_marks_reverts_and_records_the_previous_version() {
        let limits = Migrations {
            lock_timeout_ms: 2500,
            statement_timeout_seconds: 60,
            ..Migrations::default()
        };
        let files = [
            with_down(3, Some("DROP TABLE a;")),
            with_down(
                9,
                Some(&format!("{NO_TRANSACTION}\nDROP INDEX CONCURRENTLY i;")),
            ),
        ];
        let plan = plan_down(&files, at(9), 0, &SOURCE).unwrap();
        let sql = down_script(&plan, "events", &limits);
        let at = |text: &str| {
            sql.find(text)
                .unwrap_or_else(|| panic!("`{text}` missing:\n{sql}"))
        };

        assert!(at("pg_advisory_lock(2444209251)") < at("SET lock_timeout = 2500;"));
        assert!(at("SET statement_timeout = 60000;") < at("WHERE dirty) THEN"));
        assert!(at("WHERE dirty) THEN") < at("WHERE version = 9 AND NOT dirty"));
        assert!(at("WHERE version = 9 AND NOT dirty") < at("VALUES (9, true)"));
        assert!(at("VALUES (9, true)") < at("slipway-down-start 9"));
        assert!(at("slipway-down-start 9") < at("DROP INDEX CONCURRENTLY i;"));
        assert!(
            !sql[at("slipway-down-start 9")..at("slipway-down-done 9")].contains("BEGIN;\n"),
            "a marked file runs bare"
        );
        assert!(at("DROP INDEX CONCURRENTLY i;") < at("VALUES (3, false)"));
        assert!(at("VALUES (3, false)") < at("slipway-down-done 9"));

        assert!(at("slipway-down-done 9") < at("VALUES (3, true)"));
        assert!(at("BEGIN;\nDROP TABLE a;\n;\nCOMMIT;") > at("slipway-down-start 3"));
        let last = &sql[at("slipway-down-start 3")..];
        assert!(
            last.contains("BEGIN; DELETE FROM schema_migrations; COMMIT;"),
            "no file left: the table is emptied:\n{last}"
        );
        assert!(at("slipway-down-done 3") < at("pg_advisory_unlock(2444209251)"));
    }

    #[test]
    fn names_the_limit_that_stopped_a_statement() {
        let limits = Migrations::default();
        let lock = timed_out("ERROR:  canceling statement due to lock timeout", &limits);
        assert!(lock.unwrap().contains("3000 ms"));
        let statement = timed_out(
            "ERROR:  canceling statement due to statement timeout",
            &limits,
        );
        assert!(statement.unwrap().contains("600 s"));
        assert_eq!(timed_out("ERROR:  syntax error", &limits), None);
    }
}
