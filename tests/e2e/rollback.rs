//! Rollback: back to the previous release (its stopped container), to an older release
//! whose container is gone (started from its kept image), and across a schema change
//! (warns, needs --yes, runs no migration); back to the previous release after its
//! container was removed (started from its kept image).

use crate::support::{on_node_ok, Project};

/// `schema_migrations` as `<version> <dirty>`.
pub(crate) fn schema(project: &Project) -> String {
    project.psql("SELECT version || ' ' || dirty FROM schema_migrations")
}

/// Commits, deploys (exit 0 required) and returns the release nginx serves.
pub(crate) fn deploy_new(project: &Project, message: &str) -> String {
    project.commit(message);
    project.deploy().assert_code(0);
    project.live_version(0).expect("the new release answers")
}

#[test]
fn rollback_to_previous_and_older_releases() {
    let project = Project::new("e2e-rollback", 18109, 1);
    let v1 = deploy_new(&project, "v1");

    project.write(
        "migrations/000004_add_capacity.up.sql",
        "ALTER TABLE events ADD COLUMN capacity integer;\n",
    );
    project.write(
        "migrations/000004_add_capacity.down.sql",
        "ALTER TABLE events DROP COLUMN capacity;\n",
    );
    let v2 = deploy_new(&project, "v2: capacity column");
    let v3 = deploy_new(&project, "v3");
    assert_eq!(schema(&project), "4 false");

    let back = project.slipway().args(["rollback", &project.env]).run();
    back.assert_code(0)
        .assert_stderr_has(&format!("rollback: {v3} -> {v2}"))
        .assert_stderr_has("started the kept");
    assert_eq!(project.live_version(0).as_deref(), Some(v2.as_str()));

    let refused = project
        .slipway()
        .args(["rollback", &project.env, "--to", &v1])
        .run();
    refused
        .assert_code(2)
        .assert_stderr_has("schema is at version 4, newer than release")
        .assert_stderr_has("4 (add_capacity)")
        .assert_stderr_has("will not run down migrations")
        .assert_stderr_has("--yes");
    assert_eq!(project.live_version(0).as_deref(), Some(v2.as_str()));

    let older = project
        .slipway()
        .args(["rollback", &project.env, "--to", &v1, "--yes"])
        .run();
    older.assert_code(0);
    assert!(
        !older.stderr.contains("started the kept"),
        "v1's container should be gone:\n{}",
        older.stderr
    );
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    assert_eq!(schema(&project), "4 false", "rollback must not migrate");

    let history = on_node_ok(
        &project.nodes[0],
        &format!("cat {}/history.jsonl", project.state_dir()),
    );
    assert_eq!(
        history.matches("\"action\":\"rollback\"").count(),
        2,
        "{history}"
    );
    let unknown = project
        .slipway()
        .args(["rollback", &project.env, "--to", "nope"])
        .run();
    unknown
        .assert_code(2)
        .assert_stderr_has("not in this node's history");
}

/// Plain `rollback` when the previous release's container was removed from the node: the
/// release starts again from its image, which cleanup keeps, and says so.
#[test]
fn rollback_starts_from_the_kept_image_when_the_container_is_gone() {
    let project = Project::new("e2e-rbimage", 18131, 1);
    let v1 = deploy_new(&project, "v1");
    let v2 = deploy_new(&project, "v2");

    let kept = on_node_ok(
        &project.nodes[0],
        &format!(
            "docker ps -aq --filter label=slipway.env={} --filter label=slipway.release={v1}",
            project.env
        ),
    );
    assert!(!kept.is_empty(), "v1's stopped container was not kept");
    on_node_ok(
        &project.nodes[0],
        &format!(
            "docker rm -f {}",
            kept.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    );

    let back = project.slipway().args(["rollback", &project.env]).run();
    back.assert_code(0)
        .assert_stderr_has(&format!("rollback: {v2} -> {v1}"))
        .assert_stderr_has(&format!("from the kept image of {v1}"));
    assert!(
        !back.stderr.contains("started the kept"),
        "there was no container of v1 to start:\n{}",
        back.stderr
    );
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
}
