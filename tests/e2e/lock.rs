//! The environment's lock: a second deploy is refused with the holder's details, a deploy
//! killed with SIGKILL leaves nothing that blocks the next one, and `lock release` clears
//! only a holder record whose session is gone.

use std::time::{Duration, Instant};

use crate::support::{on_node, on_node_ok, sh_ok, Project, Run};

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

    let first = Run::from(first.wait_with_output().unwrap());
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

/// The deploy id `lock status` shows for the node's holder.
fn holder_deploy_id(project: &Project) -> String {
    let run = project
        .slipway()
        .args(["lock", "status", &project.env])
        .run();
    let after = run
        .stdout
        .split("(deploy ")
        .nth(1)
        .unwrap_or_else(|| panic!("no holder shown: {}", run.stdout));
    after
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn holder_record_exists(project: &Project) -> bool {
    let path = format!("{}/lock.holder", project.state_dir());
    on_node(&project.nodes[0], &format!("test -e {path}"))
        .status
        .success()
}

#[test]
fn lock_release_refuses_a_live_holder_and_clears_a_record_left_by_sigkill() {
    let mut project = Project::new("e2e-lock-release", 18193, 1);
    slow_playbook(&mut project, 40);

    let mut first = project.slipway().args(["deploy", &project.env]).spawn();
    wait_for_step(&project, "hold");
    let id = holder_deploy_id(&project);
    assert!(id.starts_with("d-"), "{id}");

    let live = project
        .slipway()
        .args(["lock", "release", &project.env, "--deploy-id", &id, "--yes"])
        .run();
    live.assert_code(3)
        .assert_stderr_has(&id)
        .assert_stderr_has("session is alive");
    assert!(live.stdout.contains("step `hold`"), "{}", live.stdout);
    assert!(holder_record_exists(&project));

    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !project
        .slipway()
        .args(["lock", "status", &project.env])
        .run()
        .stdout
        .contains("node-1: free")
    {
        assert!(Instant::now() < deadline, "lock still held after SIGKILL");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(holder_record_exists(&project), "SIGKILL leaves the record");
    let status = project
        .slipway()
        .args(["lock", "status", &project.env])
        .run();
    assert!(
        status
            .stdout
            .contains(&format!("lock release {} --deploy-id {id}", project.env)),
        "{}",
        status.stdout
    );

    let wrong = project
        .slipway()
        .args([
            "lock",
            "release",
            &project.env,
            "--deploy-id",
            "d-0-1",
            "--yes",
        ])
        .run();
    wrong.assert_code(2).assert_stderr_has(&id);
    let unconfirmed = project
        .slipway()
        .args(["lock", "release", &project.env, "--deploy-id", &id])
        .run();
    unconfirmed.assert_code(2).assert_stderr_has("--yes");
    assert!(
        holder_record_exists(&project),
        "released without confirmation"
    );

    let released = project
        .slipway()
        .args(["lock", "release", &project.env, "--deploy-id", &id, "--yes"])
        .run();
    released.assert_code(0);
    assert!(
        released.stdout.contains("holder record left behind") && released.stdout.contains("pid "),
        "{}",
        released.stdout
    );
    assert!(
        released.stdout.contains("node-1: released"),
        "{}",
        released.stdout
    );
    assert!(!holder_record_exists(&project), "the record is still there");
}

/// Containers of the environment's `color` on the node, running or not.
fn color_containers(project: &Project, color: &str) -> usize {
    on_node_ok(
        &project.nodes[0],
        &format!(
            "docker ps -aq --filter label=slipway.env={} --filter label=slipway.color={color}",
            project.env
        ),
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count()
}

#[test]
fn sigterm_during_the_health_gate_removes_the_new_color_and_exits_143() {
    let mut project = Project::new("e2e-sigterm", 18194, 1);
    project.deploy().assert_code(0);
    let v1 = project.live_version(0).expect("v1 answers");
    assert_eq!(color_containers(&project, "green"), 0);

    project.set_app_env("START_DELAY_MS", "60000");
    project.set_health_timeout(90);
    project.commit("v2 takes a minute to listen");
    let second = project.slipway().args(["deploy", &project.env]).spawn();
    wait_for_step(&project, "health_gate");
    assert!(
        color_containers(&project, "green") > 0,
        "green never started"
    );

    sh_ok(&format!("kill -TERM {}", second.id()));
    let run = Run::from(second.wait_with_output().unwrap());
    run.assert_code(143)
        .assert_stderr_has("SIGTERM")
        .assert_stderr_has("the new green color was removed");

    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    assert_eq!(
        color_containers(&project, "green"),
        0,
        "green is still there"
    );
    let lock = project
        .slipway()
        .args(["lock", "status", &project.env])
        .run();
    assert!(lock.stdout.contains("node-1: free"), "{}", lock.stdout);
    let path = format!("{}/lock.holder", project.state_dir());
    assert!(
        !on_node(&project.nodes[0], &format!("test -e {path}"))
            .status
            .success(),
        "the holder record is left behind"
    );
}
