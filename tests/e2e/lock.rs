//! The environment's lock: a second deploy is refused with the holder's details, a deploy
//! killed with SIGKILL leaves nothing that blocks the next one, and `lock release` clears
//! only a holder record whose session is gone.

use std::time::{Duration, Instant};

use crate::support::{on_node, on_node_ok, sh_ok, HarnessNode, Project, Run, Watched};

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
    let deadline = Instant::now() + Duration::from_secs(600);
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

    project.clear_app_env();
    project.set_watch_seconds(60);
    project.commit("v3, watched for a minute");
    let mut third = Watched::start(project.slipway().args(["deploy", &project.env]));
    third.wait_for_line(&["node-1 | watch..."], Duration::from_secs(600));
    assert_ne!(
        project.live_version(0).as_deref(),
        Some(v1.as_str()),
        "not switched"
    );
    third.signal("TERM");
    let (run, took) = third.finish(Duration::from_secs(120));
    run.assert_code(143)
        .assert_stderr_has("step `watch`")
        .assert_stderr_has("traffic is back on the blue color");
    assert!(took < Duration::from_secs(60), "the undo took {took:?}");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    assert_eq!(color_containers(&project, "green"), 0);
    assert_lock_free(&project);
}

/// `lock status` says node-1 is free.
#[track_caller]
pub(crate) fn assert_lock_free(project: &Project) {
    let lock = project
        .slipway()
        .args(["lock", "status", &project.env])
        .run();
    assert!(lock.stdout.contains("node-1: free"), "{}", lock.stdout);
}

/// FC-14: SIGINT while the new release's image is being shipped: exit 130, nothing of
/// the new release runs, the old one serves, the lock is free.
#[test]
fn sigint_during_image_transfer_exits_130_and_leaves_the_old_release_serving() {
    let project = Project::new("e2e-sigint-ship", 18242, 1);
    let v1 = project.deploy_first_release();

    project.commit("v2");
    let mut second = Watched::start(project.slipway().args(["deploy", &project.env]));
    second.wait_for_line(&["node-1 | ship_images..."], Duration::from_secs(600));
    second.signal("INT");
    let (run, _) = second.finish(Duration::from_secs(120));

    run.assert_code(130)
        .assert_stderr_has("SIGINT")
        .assert_stderr_has("step `ship_images`");
    assert_eq!(project.live_version(0).as_deref(), Some(v1.as_str()));
    assert_eq!(color_containers(&project, "green"), 0, "v2 started");
    assert_eq!(color_containers(&project, "blue"), 1);
    assert_lock_free(&project);
}

/// FC-14: SIGKILL while a migration sleeps. Its psql goes on on the node, so the next
/// deploy (not blocked by the dead one's lock) finds the schema dirty while that session
/// still runs: it waits for it, and the migration ends up applied once, the schema clean.
#[test]
fn a_deploy_killed_during_a_migration_leaves_it_applied_once_and_the_next_deploy_runs() {
    let project = Project::new("e2e-sigkill-migrate", 18245, 1);
    project.deploy_first_release();

    project.write(
        "migrations/000004_slow_once.up.sql",
        "CREATE TABLE fc14_runs (at timestamptz NOT NULL);
         SELECT pg_sleep(45);
         INSERT INTO fc14_runs VALUES (now());
",
    );
    project.write(
        "migrations/000004_slow_once.down.sql",
        "DROP TABLE fc14_runs;
",
    );
    project.commit("v2 with a slow migration");
    let mut killed = Watched::start(project.slipway().args(["deploy", &project.env]));
    killed.wait_for_line(&["node-1 | migrate..."], Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(2));
    killed.signal("KILL");
    let (run, _) = killed.finish(Duration::from_secs(30));
    assert_eq!(run.code, -1, "not killed: {}", run.stderr);

    let next = project.deploy();
    next.assert_code(0)
        .assert_stderr_has("migration 4 is still running (session pid");
    assert_eq!(
        project.psql("SELECT version, dirty FROM schema_migrations"),
        "4|f"
    );
    assert_eq!(project.psql("SELECT count(*) FROM fc14_runs"), "1");
    assert_lock_free(&project);
}

/// FC-15 (a): staging and production share a node. Staging's deploy holds its lock while
/// production deploys, and neither lock status shows the other's holder.
#[test]
fn staging_holding_its_lock_does_not_block_production_on_the_same_node() {
    let mut staging = Project::new("e2e-lock-staging", 18243, 1);
    slow_playbook(&mut staging, 300);
    let production = Project::new("e2e-lock-prod", 18244, 1);

    let mut held = Watched::start(staging.slipway().args(["deploy", &staging.env]));
    held.wait_for_line(&["node-1 | hold..."], Duration::from_secs(600));
    let staging_id = holder_deploy_id(&staging);

    let run = production.deploy();
    run.assert_code(0);
    assert!(!run.stderr.contains(&staging_id), "{}", run.stderr);
    assert!(production.live_version(0).is_some());

    let prod_lock = production
        .slipway()
        .args(["lock", "status", &production.env])
        .run();
    assert!(
        prod_lock.stdout.contains("node-1: free"),
        "{}",
        prod_lock.stdout
    );
    assert!(
        !prod_lock.stdout.contains(&staging_id),
        "{}",
        prod_lock.stdout
    );
    assert_eq!(
        holder_deploy_id(&staging),
        staging_id,
        "staging lost its lock"
    );

    held.signal("TERM");
    let (stopped, _) = held.finish(Duration::from_secs(60));
    stopped.assert_code(143);
    assert_lock_free(&staging);
    assert!(
        production.live_version(0).is_some(),
        "production stopped serving"
    );
}

/// A network file system mounted on a node for one test: sshfs of the node's own
/// `/srv/<name>` over SSH to itself, unmounted when dropped.
struct NetworkMount {
    node: HarnessNode,
    path: String,
}

impl NetworkMount {
    fn sshfs(node: &HarnessNode, name: &str) -> Self {
        let path = format!("/mnt/{name}");
        on_node_ok(
            node,
            &format!(
                "set -e; [ -e /dev/fuse ] || mknod -m 666 /dev/fuse c 10 229; \
                 mkdir -p /srv/{name} {path} /root/.ssh; \
                 [ -f /root/.ssh/netfs_key ] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/netfs_key; \
                 grep -qf /root/.ssh/netfs_key.pub /root/.ssh/authorized_keys || \
                   cat /root/.ssh/netfs_key.pub >> /root/.ssh/authorized_keys; \
                 mountpoint -q {path} || sshfs -o IdentityFile=/root/.ssh/netfs_key,StrictHostKeyChecking=accept-new \
                   root@127.0.0.1:/srv/{name} {path}; \
                 findmnt -n -o FSTYPE -T {path}"
            ),
        );
        NetworkMount {
            node: node.clone(),
            path,
        }
    }
}

impl Drop for NetworkMount {
    fn drop(&mut self) {
        on_node(
            &self.node,
            &format!("fusermount -u {} || umount -l {}", self.path, self.path),
        );
    }
}

/// FC-16: a state directory on a network file system (sshfs here), where flock may not
/// keep two machines' deploys apart, is refused before any lock is taken or anything
/// deployed, naming the file system and the fix.
#[test]
fn fc16_a_state_directory_on_a_network_file_system_is_refused() {
    let mut project = Project::new("e2e-fc16", 18142, 1);
    let mount = NetworkMount::sshfs(&project.nodes[0], "slipway-netfs");
    project.set_extra(&format!("state_dir: {}\n", mount.path));
    project.commit("v1");

    let run = project.deploy();
    run.assert_code(1)
        .assert_stderr_has("network file system (fuse.sshfs)")
        .assert_stderr_has("set `state_dir` to a local path");
    let containers = on_node_ok(
        &project.nodes[0],
        "docker ps -aq --filter label=slipway.env=e2e-fc16",
    );
    assert_eq!(containers.trim(), "", "nothing was started");
    let left = on_node_ok(
        &project.nodes[0],
        &format!("find {} -name lock", mount.path),
    );
    assert_eq!(left.trim(), "", "no lock file was made there");
}

/// FC-15 (c): the inventory edited while a deploy runs (a node removed, `state_dir`
/// moved) changes nothing of that run: it deploys and unlocks the nodes it locked, where
/// it locked them, and nothing is made at the new path.
#[test]
fn locks_are_released_where_they_were_taken_when_the_inventory_changes_mid_run() {
    let mut project = Project::new("e2e-lock-edit", 18143, 2);
    slow_playbook(&mut project, 15);
    let both = project.nodes.clone();

    let mut run = Watched::start(project.slipway().args(["deploy", &project.env]));
    run.wait_for_line(&["node-2 | hold..."], Duration::from_secs(600));
    project.nodes.truncate(1);
    project.set_extra("playbook: playbooks/slow.yml\nstate_dir: /var/lib/slipway-moved\n");
    let (run, _) = run.finish(Duration::from_secs(300));

    project.nodes = both;
    project.set_extra("playbook: playbooks/slow.yml\n");
    run.assert_code(0);
    let lock = project
        .slipway()
        .args(["lock", "status", &project.env])
        .run();
    for node in 0..2 {
        assert!(
            project.live_version(node).is_some(),
            "node-{} serves",
            node + 1
        );
        let free = format!("node-{}: free", node + 1);
        assert!(lock.stdout.contains(&free), "{}", lock.stdout);
        let moved = on_node(&project.nodes[node], "test -e /var/lib/slipway-moved");
        assert!(
            !moved.status.success(),
            "node-{} got the new path",
            node + 1
        );
    }
}
