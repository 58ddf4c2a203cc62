//! The environment's lock: a second deploy is refused with the holder's details, and a
//! deploy killed with SIGKILL leaves nothing that blocks the next one.

use std::time::{Duration, Instant};

use crate::support::Project;

/// A playbook whose custom node step sleeps, so a deploy holds its lock for a while.
fn slow_playbook(project: &mut Project, seconds: u32) {
    project.write(
        "playbooks/slow.yml",
        &format!(
            "steps:\n  - preflight\n  - run: {{name: hold, in: node, command: 'sleep {seconds}'}}\n  - ship_images\n\
             \x20 - upload_bundle\n  - ensure_infra\n  - snapshot\n  - migrate\n  - start_color\n  - health_gate\n\
             \x20 - switch\n  - verify\n  - drain\n  - record\n"
        ),
    );
    project.set_extra("playbook: playbooks/slow.yml\n");
    project.commit("slow playbook");
}

/// Waits until `lock status` shows the environment held in step `step`.
fn wait_for_step(project: &Project, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let run = project
            .slipway()
            .args(["lock", "status", &project.env])
            .run();
        if run.stdout.contains(&format!("step `{step}`")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the first deploy never reached step {step}");
}

#[test]
fn a_second_deploy_is_refused_while_the_first_holds_the_lock() {
    let mut project = Project::new("e2e-lock", 18105, 1);
    slow_playbook(&mut project, 15);

    let first = project.slipway().args(["deploy", &project.env]).spawn();
    wait_for_step(&project, "hold");

    let second = project.deploy();
    second
        .assert_code(3)
        .assert_stderr_has("locked by another operation")
        .assert_stderr_has("pid ")
        .assert_stderr_has("step `hold`")
        .assert_stderr_has("started ")
        .assert_stderr_has("@");

    let first = crate::support::Run::from(first.wait_with_output().unwrap());
    first.assert_code(0);
}

#[test]
fn a_deploy_killed_with_sigkill_leaves_no_stale_lock() {
    let mut project = Project::new("e2e-sigkill", 18106, 1);
    slow_playbook(&mut project, 30);

    let mut first = project.slipway().args(["deploy", &project.env]).spawn();
    wait_for_step(&project, "hold");
    first.kill().unwrap();
    first.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let run = project
            .slipway()
            .args(["lock", "status", &project.env])
            .run();
        if run.stdout.contains("node-1: free") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lock still held after SIGKILL: {}",
            run.stdout
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    project.set_extra("");
    project.commit("back to the normal playbook");
    project.deploy().assert_code(0);
    assert!(project.live_version(0).is_some());
}
