//! golang-migrate compatibility, both ways (issue 5). golang-migrate's CLI is not installed
//! here, so [`GolangMigrate`] does on the database exactly what golang-migrate v4's postgres
//! driver does with its default options: every query is one `Exec` (psql `-c` sends it as one
//! query string, so a file's statements share one implicit transaction, as with lib/pq),
//! `SetVersion` truncates the table and inserts `(version, dirty)` in one transaction (no row
//! for a clean `NilVersion`), and a run holds `pg_advisory_lock(key)` with the key its
//! `GenerateAdvisoryLockId(database, schema, table)` computes.

use std::time::{Duration, Instant};

use crate::migrations::snapshot_count;
use crate::support::{on_node, Project};

/// golang-migrate's "no version".
const NIL_VERSION: i64 = -1;

/// golang-migrate v4's `GenerateAdvisoryLockId(database, schema, table)`, worked out here
/// from its definition rather than taken from slipway: the extra names first, the database
/// last, joined by NUL; IEEE CRC-32 times the salt 1486364155, as an unsigned 32-bit number.
fn golang_migrate_lock_key(database: &str, schema: &str, table: &str) -> u64 {
    let joined = [schema, table, database].join("\0");
    u64::from(crc32fast::hash(joined.as_bytes()).wrapping_mul(1_486_364_155))
}

/// Runs queries in one psql session in the environment's database container, each sent as
/// one query string; stops at the first error. Returns psql's output, or the error text.
fn session(project: &Project, queries: &[String]) -> Result<String, String> {
    let args: String = queries
        .iter()
        .map(|q| {
            let encoded = base64_of(q);
            format!(" -c \"$(echo {encoded} | base64 -d)\"")
        })
        .collect();
    let command = format!(
        "docker exec -u postgres $(docker ps -q --filter label=com.docker.compose.project=events-{env} \
         --filter label=slipway.role=db) sh -c 'psql -X -A -t -v ON_ERROR_STOP=1 -U events -d events{args}'",
        env = project.env
    );
    let out = on_node(&project.nodes[0], &command);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What golang-migrate v4's postgres driver sends, for one run of `migrate up` or `force`.
struct GolangMigrate {
    key: u64,
}

impl GolangMigrate {
    /// The driver's open: the lock key from the connection's database and schema.
    fn open(project: &Project) -> Self {
        let names = session(
            project,
            &["SELECT current_database() || '|' || current_schema()".into()],
        )
        .expect("the database answers");
        let (database, schema) = names.split_once('|').expect("database|schema");
        GolangMigrate {
            key: golang_migrate_lock_key(database, schema, "schema_migrations"),
        }
    }

    /// `ensureVersionTable`, as the driver runs it on open.
    fn ensure_table() -> String {
        "CREATE TABLE IF NOT EXISTS \"public\".\"schema_migrations\" \
         (version bigint not null primary key, dirty boolean not null)"
            .into()
    }

    /// `SetVersion`: truncate, then insert unless the version is a clean `NilVersion`.
    fn set_version(version: i64, dirty: bool) -> String {
        let insert = if version >= 0 || (version == NIL_VERSION && dirty) {
            format!(
                "INSERT INTO \"public\".\"schema_migrations\" (version, dirty) \
                 VALUES ({version}, {dirty});"
            )
        } else {
            String::new()
        };
        format!("BEGIN; TRUNCATE \"public\".\"schema_migrations\"; {insert} COMMIT;")
    }

    /// One golang-migrate run under its advisory lock: the table ensured, then each
    /// `(version, file body)` marked dirty, run as one `Exec`, marked clean. A failing body
    /// stops the run with the version left dirty, as golang-migrate leaves it.
    fn up(&self, project: &Project, files: &[(i64, String)]) -> Result<String, String> {
        let mut queries = vec![
            format!("SELECT pg_advisory_lock({})", self.key),
            Self::ensure_table(),
        ];
        for (version, body) in files {
            queries.push(Self::set_version(*version, true));
            queries.push(body.clone());
            queries.push(Self::set_version(*version, false));
        }
        queries.push(format!("SELECT pg_advisory_unlock({})", self.key));
        session(project, &queries)
    }

    /// `migrate force <version>` (and the bookkeeping a failed run leaves) under the lock.
    fn force(&self, project: &Project, version: i64, dirty: bool) {
        let queries = [
            format!("SELECT pg_advisory_lock({})", self.key),
            Self::ensure_table(),
            Self::set_version(version, dirty),
            format!("SELECT pg_advisory_unlock({})", self.key),
        ];
        session(project, &queries).expect("golang-migrate's bookkeeping runs");
    }
}

/// The body of one of the reference app's migration files.
fn up_file(project: &Project, name: &str) -> String {
    std::fs::read_to_string(project.root().join("migrations").join(name)).unwrap()
}

/// `version|dirty` of every row of `schema_migrations`.
fn rows(project: &Project) -> String {
    project.psql("SELECT version || '|' || dirty FROM schema_migrations ORDER BY version")
}

fn migrate_status(project: &Project) -> String {
    project
        .slipway()
        .args(["migrate", "status", &project.env])
        .run()
        .stdout
}

/// The app containers (either color) of this environment on the node.
fn app_containers(project: &Project) -> String {
    let out = on_node(
        &project.nodes[0],
        &format!(
            "docker ps -aq --no-trunc --filter label=com.docker.compose.project=events-{env}-blue; \
             docker ps -aq --no-trunc --filter label=com.docker.compose.project=events-{env}-green",
            env = project.env
        ),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A deploy refused at `preflight` by a dirty schema: no snapshot, no new color, no switch.
#[track_caller]
fn assert_refused(project: &Project, stderr_has: &[&str]) {
    let before = app_containers(project);
    let run = project.deploy();
    run.assert_code(1)
        .assert_stderr_has("step `preflight` failed");
    for text in stderr_has {
        run.assert_stderr_has(text);
    }
    assert!(!run.stderr.contains("switched to"), "{}", run.stderr);
    assert_eq!(snapshot_count(project), 0, "no snapshot was taken");
    assert_eq!(app_containers(project), before, "no color was started");
}

/// Starts only the database and nginx (a playbook that stops after `ensure_infra`), so
/// golang-migrate can have its turn on the database before slipway migrates anything.
fn start_database_only(project: &mut Project) {
    project.write(
        "playbooks/infra-only.yml",
        "steps:\n  - preflight\n  - ship_images\n  - upload_bundle\n  - ensure_infra\n",
    );
    project.set_extra("playbook: playbooks/infra-only.yml\n");
    project.commit("the database only");
    project.deploy().assert_code(0);
    project.set_extra("");
}

/// golang-migrate -> slipway: no table and an empty table both read as no version; a
/// golang-migrate `NilVersion` dirty row and a dirty version both stop a deploy before any
/// work; after golang-migrate applied 1..k, slipway applies only k+1.. and leaves one row.
#[test]
fn compat_slipway_continues_or_refuses_golang_migrate_state() {
    let mut project = Project::new("e2e-compat-gm", 18220, 1);
    start_database_only(&mut project);
    let absent = migrate_status(&project);
    assert!(absent.contains("no migration applied"), "{absent}");
    let gm = GolangMigrate::open(&project);
    session(&project, &[GolangMigrate::ensure_table()]).unwrap();
    assert_eq!(
        rows(&project),
        "",
        "golang-migrate's open leaves the table empty"
    );
    assert_eq!(migrate_status(&project), absent, "empty table = no table");

    // (c) A failed down migration of the first file: NilVersion, dirty.
    gm.force(&project, NIL_VERSION, true);
    project.commit("v1");
    assert_refused(&project, &["dirty", "slipway migrate recover <env> --to 0"]);
    assert_eq!(rows(&project), "-1|true", "left as golang-migrate wrote it");
    assert!(
        migrate_status(&project).contains("DIRTY"),
        "migrate status must call the -1 row dirty"
    );
    // slipway's explicit way out, the counterpart of golang-migrate's `force -1`: an empty
    // table, which is no version.
    project
        .slipway()
        .args(["migrate", "recover", &project.env, "--to", "0", "--yes"])
        .run()
        .assert_code(0);
    assert_eq!(rows(&project), "");

    // (d) The empty table is no version: slipway applies every file, leaves one clean row.
    project
        .deploy()
        .assert_code(0)
        .assert_stderr_has("migrations applied: [1, 2, 3]");
    assert_eq!(rows(&project), "3|false");
    let v1 = project.live_version(0).expect("v1 answers");

    // Start over as a database golang-migrate manages: its run applies 1, then fails in 2.
    project.psql("DROP TABLE events, schema_migrations; DROP EXTENSION pg_trgm, vector, postgis");
    let file2 = up_file(&project, "000002_events.up.sql");
    let failed = gm.up(
        &project,
        &[
            (1, up_file(&project, "000001_extensions.up.sql")),
            (2, format!("{file2}\nSELECT 1/0;")),
        ],
    );
    assert!(failed.is_err_and(|e| e.contains("division by zero")));
    assert_eq!(
        rows(&project),
        "2|true",
        "golang-migrate left version 2 dirty"
    );

    // (b) slipway refuses before any work, names the version and the way out.
    assert_refused(
        &project,
        &["dirty at migration version 2", "slipway migrate recover"],
    );
    assert_eq!(rows(&project), "2|true");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    project
        .slipway()
        .args(["migrate", "recover", &project.env, "--to", "1", "--yes"])
        .run()
        .assert_code(0)
        .assert_stderr_has("recorded as 1 (clean)");
    assert_eq!(rows(&project), "1|false");

    // (a) golang-migrate applies 2 (k = 2); slipway's deploy applies only 3 and 4.
    gm.up(&project, &[(2, file2)]).unwrap();
    assert_eq!(rows(&project), "2|false");
    project.write(
        "migrations/000004_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    project.commit("v2 adds a column");
    project
        .deploy()
        .assert_code(0)
        .assert_stderr_has("migrations applied: [3, 4]");
    assert_eq!(
        rows(&project),
        "4|false",
        "exactly one row, the highest, clean"
    );
    assert_eq!(
        project.psql("SELECT count(*) FROM events"),
        "6",
        "3 ran once"
    );
    assert_ne!(project.live_version(0), Some(v1));
}

/// The advisory locks held in the database now: `key|objsubid|granted|holder's query`.
fn advisory_locks(project: &Project) -> Option<String> {
    session(
        project,
        &[
            "SELECT (l.classid::bigint << 32 | l.objid::bigint) || '|' || l.objsubid || '|' \
           || l.granted || '|' || a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
           WHERE l.locktype = 'advisory'"
                .into(),
        ],
    )
    .ok()
}

/// Waits, while `deploy` runs, for the first advisory lock whose holder runs `pg_sleep`.
/// On a fresh machine the deploy first builds and ships every image, so the wait lasts as
/// long as the deploy does (at most 20 minutes), not a fixed guess of how long that takes.
fn lock_while_sleeping(project: &Project, deploy: &mut std::process::Child) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(1200);
    while Instant::now() < deadline && matches!(deploy.try_wait(), Ok(None)) {
        let held = advisory_locks(project).unwrap_or_default();
        if let Some(line) = held.lines().find(|l| l.contains("pg_sleep")) {
            return Some(line.to_string());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// slipway -> golang-migrate: while slipway migrates it holds golang-migrate's advisory
/// lock (the same 64-bit key golang-migrate would ask for); afterwards the table has
/// golang-migrate's exact shape and one clean row, and golang-migrate's next run continues.
#[test]
fn compat_golang_migrate_continues_after_slipway() {
    let project = Project::new("e2e-compat-lock", 18221, 1);
    project.write("migrations/000004_wait.up.sql", "SELECT pg_sleep(5);\n");
    project.commit("v1 with a migration that takes 5 s");
    let mut deploy = project.slipway().args(["deploy", &project.env]).spawn();
    let held = lock_while_sleeping(&project, &mut deploy);
    let run = crate::support::Run::from(deploy.wait_with_output().unwrap());
    run.assert_code(0)
        .assert_stderr_has("migrations applied: [1, 2, 3, 4]");

    let gm = GolangMigrate::open(&project);
    let held = held.expect("an advisory lock was held while the migration slept");
    let fields: Vec<&str> = held.splitn(4, '|').collect();
    assert_eq!(
        fields[0],
        gm.key.to_string(),
        "golang-migrate's key: {held}"
    );
    assert_eq!(fields[1], "1", "the one-bigint form pg_advisory_lock(key)");
    assert_eq!(fields[2], "true", "granted: {held}");
    assert_eq!(advisory_locks(&project).as_deref(), Some(""), "released");

    let columns = project.psql(
        "SELECT column_name || ' ' || data_type || ' ' || is_nullable \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name = 'schema_migrations' ORDER BY ordinal_position",
    );
    assert_eq!(columns, "version bigint NO\ndirty boolean NO");
    let keys = project.psql(
        "SELECT tc.constraint_type || ' ' || k.column_name \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) \
         WHERE tc.table_schema = 'public' AND tc.table_name = 'schema_migrations'",
    );
    assert_eq!(keys, "PRIMARY KEY version");
    assert_eq!(rows(&project), "4|false");

    // golang-migrate reads the version (`LIMIT 1`), finds 4 clean, and applies 5.
    let version = session(
        &project,
        &["SELECT version || '|' || dirty FROM \"public\".\"schema_migrations\" LIMIT 1".into()],
    );
    assert_eq!(version.as_deref(), Ok("4|false"));
    let file5 = "ALTER TABLE events ADD COLUMN gm_note text;\n";
    gm.up(&project, &[(5, file5.into())]).unwrap();
    assert_eq!(rows(&project), "5|false");
    project.write("migrations/000005_gm_note.up.sql", file5);
    project.commit("file 5, applied by golang-migrate");
    let status = migrate_status(&project);
    assert!(
        status.contains("node-1: version 5; 5 of 5 files applied; pending: none"),
        "{status}"
    );
}
