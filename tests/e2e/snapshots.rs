//! Snapshots (issue 5): each records the release, commit and schema version it was taken
//! at (`snapshot list` shows them), and a deploy whose snapshot could not fit is refused at
//! preflight, before anything changes.

use crate::support::{on_node, on_node_ok, Project};

fn add_migration(project: &Project, version: u32, column: &str) {
    project.write(
        &format!("migrations/{version:06}_add_{column}.up.sql"),
        &format!("ALTER TABLE events ADD COLUMN {column} integer;\n"),
    );
    project.commit(&format!("adds events.{column}"));
}

#[test]
fn snapshots_record_what_they_were_taken_at_and_need_room() {
    let project = Project::new("e2e-snapshots", 18125, 1);
    let v1 = project.deploy_first_release();

    add_migration(&project, 4, "capacity");
    project.deploy().assert_code(0);
    let v2 = project.live_version(0).expect("v2 answers");

    let list = project
        .slipway()
        .args(["snapshot", "list", &project.env])
        .run();
    list.assert_code(0);
    let expected = "schema 3  taken ";
    let before = format!("before deploying {v2} (live: {v1})");
    assert!(
        list.stdout.contains(expected) && list.stdout.contains(&before),
        "snapshot list lacks `{expected}` or `{before}`:\n{}",
        list.stdout
    );

    let snapshots = format!("{}/snapshots", project.state_dir());
    on_node_ok(
        &project.nodes[0],
        &format!("mount -t tmpfs -o size=1m e2e-small-disk {snapshots}"),
    );
    add_migration(&project, 5, "seats");
    let run = project.deploy();
    on_node(&project.nodes[0], &format!("umount {snapshots}"));

    run.assert_code(1)
        .assert_stderr_has("step `preflight` failed")
        .assert_stderr_has("the snapshot would not fit")
        .assert_stderr_has("bytes");
    assert_eq!(project.live_version(0).as_deref(), Some(v2.as_str()));
    assert_eq!(
        project.psql("SELECT version || ' ' || dirty FROM schema_migrations"),
        "4 false",
        "nothing may run after the refusal"
    );
}
