//! Down migrations, only when asked for (issue 5, FC-19): `rollback --migrate-down` takes a
//! snapshot, switches to the older release, then runs the newer release's down files; a
//! missing or empty down file refuses before any change; a down file that fails leaves the
//! older release live and names the way out; `migrate down` snapshots first and needs
//! confirmation; `migrate recover` clears golang-migrate's dirty -1 row.

use crate::rollback::{deploy_new, schema};
use crate::snapshot_commands::dumps;
use crate::support::{on_node_ok, Project, Slipway};

const CAPACITY: &str = "SELECT count(*) FROM information_schema.columns \
                        WHERE table_name = 'events' AND column_name = 'capacity'";

/// Adds migration 4 (a column) with `down` as its down file (`None`: no down file).
fn add_capacity(project: &Project, down: Option<&str>) {
    project.write(
        "migrations/000004_add_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    if let Some(text) = down {
        project.write("migrations/000004_add_capacity.down.sql", text);
    }
}

fn migrate_status(project: &Project) -> String {
    let run = project
        .slipway()
        .args(["migrate", "status", &project.env])
        .run();
    run.stdout
}

/// `slipway rollback --to <release> --migrate-down --yes`, ready to run.
fn rollback_down(project: &Project, release: &str) -> Slipway {
    project.slipway().args([
        "rollback",
        &project.env,
        "--to",
        release,
        "--migrate-down",
        "--yes",
    ])
}

#[test]
fn fc19_rollback_reverts_the_newer_releases_migration() {
    let project = Project::new("e2e-fc19-down", 18200, 1);
    let v1 = deploy_new(&project, "v1");
    add_capacity(&project, Some("ALTER TABLE events DROP COLUMN capacity;\n"));
    let v2 = deploy_new(&project, "v2: capacity column");
    assert_eq!(schema(&project), "4 false");
    assert_eq!(project.psql(CAPACITY), "1");
    let before = dumps(&project).len();

    let back = rollback_down(&project, &v1).args(["--json"]).run();
    back.assert_code(0)
        .assert_stderr_has(&format!("rollback: {v2} -> {v1}"))
        .assert_stderr_has("--migrate-down: schema version 4 -> version 3")
        .assert_stderr_has("4 (add_capacity)")
        .assert_stderr_has("down migrations run: [4]; schema version 3; snapshot events_");
    for step in ["snapshot", "migrate_down"] {
        assert!(
            back.stdout.lines().any(|l| l.contains("step.finished")
                && l.contains(&format!("\"step\":\"{step}\""))),
            "no finished `{step}` event:\n{}",
            back.stdout
        );
    }
    let switched = back
        .stderr
        .find("switched to")
        .expect("the rollback switched");
    let reverted = back.stderr.find("down migrations run").unwrap();
    assert!(
        switched < reverted,
        "the down ran before the switch:\n{}",
        back.stderr
    );

    assert_eq!(dumps(&project).len(), before + 1, "one snapshot first");
    assert_eq!(schema(&project), "3 false");
    assert_eq!(project.psql(CAPACITY), "0", "the column is gone");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    let status = migrate_status(&project);
    assert!(
        status.contains("node-1: version 3;") && status.contains("pending: 4 (add_capacity)"),
        "{status}"
    );

    let history = on_node_ok(
        &project.nodes[0],
        &format!("tail -n 1 {}/history.jsonl", project.state_dir()),
    );
    assert!(
        history.contains("\"action\":\"rollback\"") && history.contains("\"schema_version\":3"),
        "{history}"
    );
}

#[test]
fn fc19_a_missing_or_empty_down_file_is_refused_before_any_change() {
    let project = Project::new("e2e-fc19-refuse", 18201, 1);
    let v1 = deploy_new(&project, "v1");
    add_capacity(&project, Some("-- nothing to undo\n\n"));
    project.write(
        "migrations/000005_add_venue.up.sql",
        "ALTER TABLE events ADD COLUMN venue text;\n",
    );
    let v2 = deploy_new(&project, "v2: an empty and a missing down file");
    assert_eq!(schema(&project), "5 false");
    let before = dumps(&project);

    let refused = rollback_down(&project, &v1).run();
    refused
        .assert_code(2)
        .assert_stderr_has("migrations/000005_add_venue.down.sql is missing")
        .assert_stderr_has("migrations/000004_add_capacity.down.sql is empty")
        .assert_stderr_has("nothing was changed");
    assert_eq!(dumps(&project), before, "no snapshot was taken");
    assert_eq!(project.live_version(0).as_deref(), Some(v2.as_str()));
    assert_eq!(schema(&project), "5 false");
    assert_eq!(project.psql(CAPACITY), "1");

    // The live release's commit must be in the repository to read its down files.
    let live_commit = project.git(&["rev-parse", "HEAD"]);
    project.git(&["reset", "-q", "--hard", "HEAD~1"]);
    project.git(&["reflog", "expire", "--expire=now", "--all"]);
    project.git(&["gc", "-q", "--prune=now"]);
    let unknown = rollback_down(&project, &v1).run();
    unknown
        .assert_code(2)
        .assert_stderr_has(&format!("commit {}", live_commit.trim()))
        .assert_stderr_has("git fetch");
    assert_eq!(dumps(&project), before);
    assert_eq!(project.live_version(0).as_deref(), Some(v2.as_str()));
}

#[test]
fn fc19_a_failing_down_file_leaves_the_older_release_live_and_names_the_way_out() {
    let project = Project::new("e2e-fc19-fail", 18203, 1);
    let v1 = deploy_new(&project, "v1");
    add_capacity(
        &project,
        Some("ALTER TABLE events DROP COLUMN no_such_column;\n"),
    );
    deploy_new(&project, "v2: a down file that fails");
    let before = dumps(&project).len();

    let failed = rollback_down(&project, &v1).run();
    failed
        .assert_code(1)
        .assert_stderr_has("step `migrate_down` failed")
        .assert_stderr_has("marked dirty at version 4")
        .assert_stderr_has("no_such_column")
        .assert_stderr_has(&format!("release {v1} stays live"))
        .assert_stderr_has("slipway migrate recover");
    let taken = dumps(&project);
    assert_eq!(taken.len(), before + 1, "a snapshot was taken first");
    let newest = taken.iter().max().unwrap();
    failed.assert_stderr_has(&format!("snapshot taken before the rollback is {newest}"));
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    assert_eq!(schema(&project), "4 true");
    assert_eq!(
        project.psql(CAPACITY),
        "1",
        "the down's transaction rolled back"
    );

    project
        .slipway()
        .args(["migrate", "recover", &project.env, "--to", "4", "--yes"])
        .run()
        .assert_code(0);
    assert_eq!(schema(&project), "4 false");
}

#[test]
fn migrate_down_to_a_version_snapshots_first_and_needs_confirmation() {
    let project = Project::new("e2e-migrate-down", 18202, 1);
    let v1 = project.deploy_first_release();
    assert_eq!(schema(&project), "3 false");
    let before = dumps(&project).len();
    let seeded = project.psql("SELECT count(*) FROM events");
    assert_ne!(seeded, "0");

    let down = |extra: &[&str]| {
        project
            .slipway()
            .args(["migrate", "down", &project.env])
            .args(extra.iter().copied())
            .run()
    };
    down(&["--to", "3"])
        .assert_code(0)
        .assert_stderr_has("nothing to revert");
    let refused = down(&["--to", "2"]);
    refused
        .assert_code(2)
        .assert_stderr_has("schema version 3 -> version 2: revert 3 (seed_events)")
        .assert_stderr_has("--yes");
    assert_eq!(
        dumps(&project).len(),
        before,
        "nothing to revert, or refused: no snapshot"
    );
    assert_eq!(schema(&project), "3 false");

    down(&["--to", "2", "--yes"])
        .assert_code(0)
        .assert_stderr_has("reverted [3]; schema version 2; snapshot events_");
    assert_eq!(dumps(&project).len(), before + 1);
    assert_eq!(schema(&project), "2 false");
    assert_eq!(project.psql("SELECT count(*) FROM events"), "0");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));

    // golang-migrate's dirty "no version" row, left by a failed down of the first file.
    project.psql("UPDATE schema_migrations SET version = -1, dirty = true");
    let recover = |to: &str| {
        project
            .slipway()
            .args(["migrate", "recover", &project.env, "--to", to, "--yes"])
            .run()
    };
    recover("2")
        .assert_code(2)
        .assert_stderr_has("must be 0")
        .assert_stderr_has("or 1");
    recover("0")
        .assert_code(0)
        .assert_stderr_has("golang-migrate's dirty -1 row");
    assert_eq!(schema(&project), "", "no version, clean: an empty table");
}
