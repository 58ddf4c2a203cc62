//! Cleanup after deploys (FC-20 shape): this environment's release images on the node stay
//! within the keep count, while volumes and other projects' images and containers, even
//! ones that look like ours, are never touched; what a killed run left half-written is
//! swept.

use crate::support::{on_node_ok, HarnessNode, Project};

const STRANGER_IMAGE: &str = "e2e-stranger/app:kept";
const STRANGER_VOLUME: &str = "e2e-cleanup-stranger";
const STRANGER_CONTAINER: &str = "e2e-cleanup-stranger";

fn deploy_new(project: &Project, message: &str) -> String {
    project.commit(message);
    project.deploy().assert_code(0);
    project.live_version(0).expect("the new release answers")
}

/// Which of `releases` still have their image on the node.
fn images_present(node: &HarnessNode, releases: &[String]) -> Vec<String> {
    releases
        .iter()
        .filter(|r| {
            crate::support::on_node(node, &format!("docker image inspect slipway/events:{r}"))
                .status
                .success()
        })
        .cloned()
        .collect()
}

/// An image (sharing layers and ID with release `r1`), a volume and a stopped container
/// labelled as another environment of the same app.
fn add_strangers(node: &HarnessNode, r1: &str) {
    on_node_ok(
        node,
        &format!(
            "docker rm -f {STRANGER_CONTAINER} >/dev/null 2>&1; \
             docker volume rm {STRANGER_VOLUME} >/dev/null 2>&1; \
             docker tag slipway/events:{r1} {STRANGER_IMAGE} && \
             docker volume create {STRANGER_VOLUME} >/dev/null && \
             docker create --name {STRANGER_CONTAINER} --label slipway.app=events \
               --label slipway.env=e2e-cleanup-other --label slipway.release={r1} \
               -v {STRANGER_VOLUME}:/data {STRANGER_IMAGE} >/dev/null"
        ),
    );
}

#[test]
fn cleanup_keeps_the_newest_releases_and_touches_nothing_else() {
    let mut project = Project::new("e2e-cleanup", 18122, 1);
    project.set_extra("keep_releases: 2\n");
    let node = project.nodes[0].clone();

    let r1 = deploy_new(&project, "release 1");
    add_strangers(&node, &r1);
    let r2 = deploy_new(&project, "release 2");
    let all = vec![r1.clone(), r2.clone()];
    assert_eq!(
        images_present(&node, &all),
        all,
        "the live and previous releases must keep their images"
    );

    let state = project.state_dir();
    let leftovers = format!(
        "{state}/releases/r9.partial/secrets/db_password {state}/history.jsonl.tmp-slipway"
    );
    on_node_ok(
        &node,
        &format!("mkdir -p {state}/releases/r9.partial/secrets && touch {leftovers}"),
    );

    let r3 = deploy_new(&project, "release 3");
    let left = crate::support::on_node(&node, &format!("ls {leftovers} 2>/dev/null"));
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "a killed run's partial bundle and temporary file must be swept"
    );
    let all = vec![r1.clone(), r2.clone(), r3.clone()];
    assert_eq!(
        images_present(&node, &all),
        vec![r2.clone(), r3.clone()],
        "with keep_releases 2, only the two newest releases keep their images"
    );
    let releases = on_node_ok(&node, &format!("ls {}/releases", project.state_dir()));
    assert!(
        !releases.contains(&r1) && releases.contains(&r2) && releases.contains(&r3),
        "release directories on the node: {releases}"
    );

    on_node_ok(
        &node,
        &format!("docker image inspect {STRANGER_IMAGE} >/dev/null"),
    );
    on_node_ok(
        &node,
        &format!("docker volume inspect {STRANGER_VOLUME} >/dev/null"),
    );
    on_node_ok(
        &node,
        &format!("docker container inspect {STRANGER_CONTAINER} >/dev/null"),
    );
    let volumes = on_node_ok(
        &node,
        "docker volume ls -q --filter label=com.docker.compose.project=events-e2e-cleanup",
    );
    assert!(!volumes.is_empty(), "the database volume is gone");

    on_node_ok(
        &node,
        &format!(
            "docker rm -f {STRANGER_CONTAINER} >/dev/null && docker volume rm {STRANGER_VOLUME} \
             >/dev/null && docker image rm {STRANGER_IMAGE} >/dev/null"
        ),
    );
}
