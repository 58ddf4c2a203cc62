//! Migrations as a guarded phase (issue 5): a migration queued behind a long transaction
//! gives up within the lock timeout, the deploy stops before the switch with the old
//! release serving, the message names the blocker, `migrate status` tells the state, and
//! `migrate recover` is the explicit way back to a clean schema. A non-transactional file
//! runs alone or not at all, and a migration that would break the serving release stops the
//! deploy before the snapshot until it is acknowledged.

use std::process::{Command, Stdio};

use crate::support::{on_node_ok, Project};

/// An open transaction that has read the events table (so it holds a lock that an
/// `ALTER TABLE` must wait for), for at most a minute.
fn hold_events_table(project: &Project) -> std::process::Child {
    Command::new("docker")
        .args(["exec", &project.nodes[0].container, "sh", "-c"])
        .arg(format!(
            "docker exec -e PGAPPNAME=e2e-blocker -u postgres \
             $(docker ps -q --filter label=com.docker.compose.project=events-{} \
             --filter label=slipway.role=db) psql -U events -d events \
             -c 'BEGIN; SELECT count(*) FROM events; SELECT pg_sleep(60); COMMIT;'",
            project.env
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker exec runs")
}

fn migrate_status(project: &Project) -> (i32, String) {
    let run = project
        .slipway()
        .args(["migrate", "status", &project.env])
        .run();
    (run.code, run.stdout)
}

#[test]
fn a_migration_behind_a_long_transaction_fails_fast_and_names_the_blocker() {
    let mut project = Project::new("e2e-migrate-lock", 18124, 1);
    project.set_extra("migrations:\n  lock_timeout_ms: 1500\n");
    let v1 = project.deploy_first_release();
    let (code, status) = migrate_status(&project);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("node-1: version 3; 3 of 3 files applied; pending: none"),
        "{status}"
    );

    project.write(
        "migrations/000004_add_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    project.commit("v2 adds a column");
    let (_, status) = migrate_status(&project);
    assert!(status.contains("pending: 4 (add_capacity)"), "{status}");

    let blocker = hold_events_table(&project);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let run = project.deploy();
    project.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'e2e-blocker'",
    );
    let _ = blocker.wait_with_output();

    run.assert_code(1)
        .assert_stderr_has("step `migrate` failed")
        .assert_stderr_has("waited 1500 ms for a lock")
        .assert_stderr_has("e2e-blocker")
        .assert_stderr_has("pg_sleep(60)");
    assert!(
        !run.stderr.contains("switched to"),
        "the deploy switched:\n{}",
        run.stderr
    );
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));

    let (code, status) = migrate_status(&project);
    assert_eq!(code, 1, "a dirty database is not a clean status: {status}");
    assert!(
        status.contains("version 4, DIRTY") && status.contains("3 of 4 files applied"),
        "{status}"
    );
    project
        .deploy()
        .assert_code(1)
        .assert_stderr_has("dirty at migration version 4")
        .assert_stderr_has("slipway migrate recover");

    let recover = |args: &[&str]| {
        let mut all = vec!["migrate", "recover", project.env.as_str()];
        all.extend_from_slice(args);
        project.slipway().args(all).run()
    };
    recover(&["--to", "2", "--yes"])
        .assert_code(2)
        .assert_stderr_has("--to must be 4 (its file did apply) or 3 (it did not)");
    recover(&["--to", "3"])
        .assert_code(2)
        .assert_stderr_has("taken as not applied")
        .assert_stderr_has("--yes");
    assert!(
        migrate_status(&project).1.contains("DIRTY"),
        "unconfirmed, unchanged"
    );
    recover(&["--to", "3", "--yes"])
        .assert_code(0)
        .assert_stderr_has("recorded as 3 (clean)");

    project.deploy().assert_code(0);
    let (code, status) = migrate_status(&project);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("version 4; 4 of 4 files applied"),
        "{status}"
    );
    assert_ne!(project.live_version(0), Some(v1));
}

/// `version|dirty` as `schema_migrations` holds it.
fn schema(project: &Project) -> String {
    project.psql("SELECT version || '|' || dirty FROM schema_migrations")
}

/// How many snapshots the node holds for this environment.
pub(crate) fn snapshot_count(project: &Project) -> usize {
    let listing = on_node_ok(
        &project.nodes[0],
        &format!(
            "ls {}/snapshots/ 2>/dev/null | grep -c '\\.dump$' || true",
            project.state_dir()
        ),
    );
    listing.trim().parse().unwrap_or(0)
}

#[test]
fn a_non_transactional_migration_runs_alone_or_not_at_all() {
    let project = Project::new("e2e-migrate-notx", 18181, 1);
    let v1 = project.deploy_first_release();
    assert_eq!(schema(&project), "3|false");
    assert_eq!(
        snapshot_count(&project),
        0,
        "the first deploy had nothing to snapshot"
    );

    let file = "migrations/000004_index_events.up.sql";
    project.write(
        file,
        "-- slipway:no-transaction\n\
         CREATE INDEX CONCURRENTLY events_starts_at ON events (starts_at);\n\
         CREATE INDEX CONCURRENTLY events_name_btree ON events (name);\n",
    );
    project.commit("v2: two concurrent index builds in one file");
    project
        .deploy()
        .assert_code(1)
        .assert_stderr_has("step `preflight` failed")
        .assert_stderr_has("000004_index_events.up.sql holds 2 statements");
    assert_eq!(schema(&project), "3|false", "no migration ran");
    assert_eq!(snapshot_count(&project), 0, "no snapshot was taken");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    let indexes = "SELECT count(*) FROM pg_indexes WHERE indexname IN \
                   ('events_starts_at', 'events_name_btree')";
    assert_eq!(project.psql(indexes), "0");

    project.write(
        file,
        "-- slipway:no-transaction\n\
         CREATE INDEX CONCURRENTLY events_starts_at ON events (starts_at);\n",
    );
    project.write(
        "migrations/000004_index_events.down.sql",
        "-- slipway:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS events_starts_at;\n",
    );
    project.commit("v2: one concurrent index build");
    project.deploy().assert_code(0);
    assert_eq!(schema(&project), "4|false");
    assert_eq!(
        project.psql(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'events_starts_at'::regclass"
        ),
        "t",
        "the index exists and is valid"
    );
    assert_eq!(
        snapshot_count(&project),
        1,
        "one snapshot, before migrating"
    );
    assert_ne!(project.live_version(0), Some(v1));
}

#[test]
fn a_breaking_migration_stops_before_the_snapshot_until_acknowledged() {
    let mut project = Project::new("e2e-migrate-lint", 18182, 1);
    let v1 = project.deploy_first_release();

    project.write(
        "migrations/000004_legacy.up.sql",
        "-- a column added and dropped again\n\
         ALTER TABLE events ADD COLUMN legacy text;\n\
         ALTER TABLE events DROP COLUMN legacy;\n",
    );
    project.commit("v2 drops a column");
    project
        .deploy()
        .assert_code(1)
        .assert_stderr_has("step `preflight` failed")
        .assert_stderr_has("migrations/000004_legacy.up.sql:3: ban-drop-column")
        .assert_stderr_has("expand/contract")
        .assert_stderr_has("\"4\": [ban-drop-column]");
    assert_eq!(schema(&project), "3|false", "no migration ran");
    assert_eq!(snapshot_count(&project), 0, "no snapshot was taken");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));

    project.set_extra("migrations:\n  acknowledge:\n    \"000004\": [ban-drop-colum]\n");
    project
        .deploy()
        .assert_code(2)
        .assert_stderr_has("migrations.acknowledge")
        .assert_stderr_has("`ban-drop-colum` is not a lint rule");

    project.set_extra("migrations:\n  acknowledge:\n    \"000004\": [ban-drop-column]\n");
    project.deploy().assert_code(0);
    assert_eq!(schema(&project), "4|false");
    assert_eq!(snapshot_count(&project), 1);
    assert_ne!(project.live_version(0), Some(v1));
}

/// The snapshot files the node holds for this environment, oldest first.
fn snapshot_names(project: &Project) -> Vec<String> {
    let listing = on_node_ok(
        &project.nodes[0],
        &format!(
            "ls {}/snapshots/ 2>/dev/null | grep '\\.dump$' || true",
            project.state_dir()
        ),
    );
    listing.lines().map(str::to_string).collect()
}

/// The `schema_version` field of the node's last history record.
fn recorded_schema(project: &Project) -> serde_json::Value {
    let last = on_node_ok(
        &project.nodes[0],
        &format!("tail -n 1 {}/history.jsonl", project.state_dir()),
    );
    let record: serde_json::Value = serde_json::from_str(last.trim()).expect("a JSON record");
    record["schema_version"].clone()
}

/// FC-06 (a): a file whose second statement fails leaves the schema dirty at its version
/// (its transaction rolled back), the old release serving, and a message that names the
/// version, the dirty state, the database's error, the snapshot and the way out; the next
/// deploy refuses before any work.
#[test]
fn fc06_a_failed_second_statement_leaves_a_dirty_schema_and_blocks_the_next_deploy() {
    let project = Project::new("e2e-fc06-dirty", 18186, 1);
    let v1 = project.deploy_first_release();
    assert_eq!(
        recorded_schema(&project),
        3,
        "v1 expects its last migration"
    );

    project.write(
        "migrations/000004_half_done.up.sql",
        "ALTER TABLE events ADD COLUMN fc06_note text;\n\
         INSERT INTO fc06_missing VALUES (1);\n",
    );
    project.commit("v2: a migration whose second statement fails");
    let run = project.deploy();
    let snapshots = snapshot_names(&project);
    assert_eq!(
        snapshots.len(),
        1,
        "one snapshot before migrating: {snapshots:?}"
    );
    run.assert_code(1)
        .assert_stderr_has("step `migrate` failed")
        .assert_stderr_has("migration 4 failed")
        .assert_stderr_has("marked dirty at version 4")
        .assert_stderr_has("relation \"fc06_missing\" does not exist")
        .assert_stderr_has(&snapshots[0])
        .assert_stderr_has("slipway migrate recover");
    assert_eq!(
        schema(&project),
        "4|true",
        "dirty, never forced by the tool"
    );
    let column = "SELECT count(*) FROM information_schema.columns \
                  WHERE table_name = 'events' AND column_name = 'fc06_note'";
    assert_eq!(
        project.psql(column),
        "0",
        "the first statement was rolled back"
    );
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));

    project
        .deploy()
        .assert_code(1)
        .assert_stderr_has("step `preflight` failed")
        .assert_stderr_has("dirty at migration version 4");
    assert_eq!(snapshot_names(&project), snapshots, "no new snapshot");
    assert_eq!(schema(&project), "4|true");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
}

/// FC-06 (b): a migration that outlasts the app's health timeout is not cut short by it;
/// the deploy goes on and records the schema the release expects.
#[test]
fn fc06_b_a_migration_longer_than_the_health_timeout_completes() {
    let mut project = Project::new("e2e-fc06-slow", 18187, 1);
    project.set_health_timeout(10);
    project.write(
        "migrations/000004_slow.up.sql",
        "SELECT pg_sleep(25);\n\
         ALTER TABLE events ADD COLUMN fc06_after_sleep text;\n",
    );
    project.commit("v1 with a migration that sleeps past the health timeout");
    let run = project.deploy();
    run.assert_code(0)
        .assert_stderr_has("migrations applied: [1, 2, 3, 4]");
    assert_eq!(schema(&project), "4|false");
    let column = "SELECT count(*) FROM information_schema.columns \
                  WHERE table_name = 'events' AND column_name = 'fc06_after_sleep'";
    assert_eq!(
        project.psql(column),
        "1",
        "the statement after the sleep ran"
    );
    assert!(project.live_version(0).is_some(), "the release answers");
    assert_eq!(recorded_schema(&project), 4);
}
