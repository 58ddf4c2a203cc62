//! Migrations as a guarded phase (issue 5): a migration queued behind a long transaction
//! gives up within the lock timeout, the deploy stops before the switch with the old
//! release serving, the message names the blocker, `migrate status` tells the state, and
//! `migrate recover` is the explicit way back to a clean schema.

use std::process::{Command, Stdio};

use crate::support::Project;

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
    project.commit("v1");
    project.deploy().assert_code(0);
    let v1 = project.live_version(0).expect("v1 answers");
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
