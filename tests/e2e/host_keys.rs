//! Host keys: an unknown or changed key stops the node before any remote command, and the
//! message names the host, the fingerprints and how to trust the key.

use std::path::Path;

use crate::support::{on_node, on_node_ok, Project};

/// The SHA256 fingerprint of the node's ed25519 host key, computed by ssh-keygen.
fn node_fingerprint(project: &Project) -> String {
    let key = on_node_ok(&project.nodes[0], "cat /etc/ssh/ssh_host_ed25519_key.pub");
    let out = crate::support::sh_ok(&format!("echo '{key}' | ssh-keygen -l -f - -E sha256"));
    out.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn unknown_and_changed_host_keys_stop_before_any_remote_command() {
    let mut project = Project::new("e2e-hostkeys", 18108, 1);
    let address = project.nodes[0].address.clone();
    let offered = node_fingerprint(&project);

    let empty = project.root().join("known_hosts.empty");
    std::fs::write(&empty, "").unwrap();
    project.set_known_hosts(&empty);
    let run = project.deploy();
    run.assert_code(1)
        .assert_stderr_has(&format!("host key of {address} is not known"))
        .assert_stderr_has(&offered)
        .assert_stderr_has("slipway trust");
    let check = project.slipway().args(["check", &project.env]).run();
    check.assert_code(1);
    assert!(check.stdout.contains(&offered), "{}", check.stdout);

    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let changed = project.root().join("known_hosts.changed");
    std::fs::write(&changed, format!("# rebuilt node\n{address} {other}\n")).unwrap();
    project.set_known_hosts(&changed);
    let run = project.deploy();
    run.assert_code(1)
        .assert_stderr_has("HOST KEY CHANGED")
        .assert_stderr_has(&format!("{}:2", changed.display()))
        .assert_stderr_has(&offered)
        .assert_stderr_has("slipway trust");

    let state = on_node(
        &project.nodes[0],
        &format!("test -e {}", project.state_dir()),
    );
    assert!(
        !state.status.success(),
        "a command ran on a node whose key was refused"
    );

    trust_by_fingerprint_only(&project, &changed, &offered);
}

/// `slipway trust` shows the offered key, refuses a fingerprint that is not it, and with
/// the right one replaces the rebuilt node's old key by a hashed entry.
fn trust_by_fingerprint_only(project: &Project, known_hosts: &Path, offered: &str) {
    let before = std::fs::read_to_string(known_hosts).unwrap();
    let trust = |extra: &[&str]| {
        project
            .slipway()
            .args(["trust", &project.env])
            .args(extra.iter().copied())
            .run()
    };

    let shown = trust(&[]);
    shown.assert_code(0).assert_stderr_has(offered);
    let wrong = trust(&["--fingerprint", "SHA256:not-the-key"]);
    wrong
        .assert_code(1)
        .assert_stderr_has(offered)
        .assert_stderr_has("nothing was trusted");
    assert_eq!(std::fs::read_to_string(known_hosts).unwrap(), before);

    trust(&["--fingerprint", offered])
        .assert_code(0)
        .assert_stderr_has("replacing 1 older key line");
    let after = std::fs::read_to_string(known_hosts).unwrap();
    assert!(after.contains("# rebuilt node"), "{after}");
    assert!(
        !after.contains("AAAAIOMqqnkVzrm0"),
        "the old key stayed:\n{after}"
    );
    assert!(after.lines().last().unwrap().starts_with("|1|"), "{after}");

    let check = project.slipway().args(["check", &project.env]).run();
    check.assert_code(0);
    trust(&[])
        .assert_code(0)
        .assert_stderr_has("already trusted");
}

/// The harness nodes offer ed25519, ecdsa and RSA host keys; russh asks for ed25519 first
/// unless told otherwise. A known_hosts that holds only one other type of the node's keys
/// (as an older `ssh-keyscan` or a provisioning tool may have written it) must still let
/// slipway in, as it lets OpenSSH in.
#[test]
fn a_node_known_only_by_its_ecdsa_or_rsa_key_is_reached() {
    let mut project = Project::new("e2e-keytypes", 18261, 1);
    let node = project.nodes[0].clone();
    let offered = on_node_ok(&node, "ls /etc/ssh/ssh_host_*_key.pub");
    for kind in ["ed25519", "ecdsa", "rsa"] {
        assert!(
            offered.contains(&format!("ssh_host_{kind}_key.pub")),
            "the node lacks its {kind} host key:\n{offered}"
        );
    }

    for kind in ["ecdsa", "rsa"] {
        let key = on_node_ok(&node, &format!("cat /etc/ssh/ssh_host_{kind}_key.pub"));
        let only = project.root().join(format!("known_hosts.{kind}"));
        let line = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        std::fs::write(&only, format!("{} {line}\n", node.address)).unwrap();
        project.set_known_hosts(&only);

        let check = project.slipway().args(["check", &project.env]).run();
        check.assert_code(0);
        assert!(
            check.stdout.contains("host key verified"),
            "{kind}: {}",
            check.stdout
        );
    }
}
