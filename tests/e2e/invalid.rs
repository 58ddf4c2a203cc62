//! Invalid input is refused with exit 2, a message naming the file and key, and no change
//! on any node.

use crate::support::{on_node, Project};

/// Runs `deploy`, expects exit 2 naming every piece of `expected`, and checks that the node
/// holds nothing of the environment.
#[track_caller]
fn refused(project: &Project, expected: &[&str]) {
    let run = project.deploy();
    run.assert_code(2);
    for text in expected {
        run.assert_stderr_has(text);
    }
    assert!(
        run.stderr.contains("fix:"),
        "no fix is given:\n{}",
        run.stderr
    );

    let state = on_node(
        &project.nodes[0],
        &format!("test -e {}", project.state_dir()),
    );
    assert!(
        !state.status.success(),
        "the node was touched: {} exists",
        project.state_dir()
    );
}

#[test]
fn each_kind_of_invalid_input_is_refused_before_any_node_is_touched() {
    let mut project = Project::new("e2e-invalid", 18104, 1);
    let inventory = format!("inventory/{}.yml", project.env);
    let secrets = format!("inventory/{}.env", project.env);

    project.set_extra("colour: blue\n");
    refused(&project, &[&inventory, "unknown field `colour`", "line"]);
    project.set_extra("");

    let good = std::fs::read_to_string(project.root().join(&inventory)).unwrap();
    project.write(
        &inventory,
        &good.replace(&project.nodes[0].address, "10.0.0"),
    );
    refused(&project, &[&inventory, "`address` is malformed", "10.0.0"]);
    project.write(&inventory, &good);

    project.write(&inventory, &good.replace("    user: root\n", ""));
    refused(&project, &[&inventory, "`user` is missing"]);
    project.write(&inventory, &good);

    project.write_secrets("DB_PASSWORD=fine\n");
    std::fs::set_permissions(
        project.root().join(&secrets),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    refused(
        &project,
        &[&secrets, "readable by group or others", "chmod 600"],
    );

    project.write_secrets("API_KEY=only-this\n");
    refused(&project, &[&secrets, "`DB_PASSWORD` is missing"]);

    project.write_secrets("DB_PASSWORD=fine\nthis line is not an assignment\n");
    let run = project.deploy();
    run.assert_code(2)
        .assert_stderr_has(&secrets)
        .assert_stderr_has("line 2");
    assert!(
        !run.stderr.contains("not an assignment"),
        "the bad line is quoted:\n{}",
        run.stderr
    );

    // A `$` the `.env` format would expand: after a closing quote, and on a later line of
    // a multi-line value. Both `deploy` and `secrets check` name the line, never the value.
    for (text, line) in [
        ("DB_PASSWORD=fine\nAPI_KEY='SNTL-lit'$HOME\n", "line 2:"),
        (
            "DB_PASSWORD=fine\n\nAPI_KEY=\"SNTL-first\nSNTL-then $PATH here\"\n",
            "line 4:",
        ),
    ] {
        project.write_secrets(text);
        refused(&project, &[&secrets, line, "`API_KEY`", "`$` as `\\$`"]);
        let check = project
            .slipway()
            .args(["secrets", "check", &project.env])
            .run();
        check.assert_code(2).assert_stderr_has(line);
        for run in [&project.deploy(), &check] {
            let printed = format!("{}{}", run.stdout, run.stderr);
            assert!(!printed.contains("SNTL-"), "a value is shown:\n{printed}");
        }
    }

    // `secrets check`: a missing secret is named (exit 2), an unused one is listed; no value.
    project.write_secrets("DB_PASSWORD=SNTL-db-value\nOLD_TOKEN=SNTL-old-value\n");
    let check = project
        .slipway()
        .args(["secrets", "check", &project.env])
        .run();
    check
        .assert_code(2)
        .assert_stderr_has("missing secret(s): API_KEY")
        .assert_stderr_has(&secrets);
    let rows: Vec<Vec<&str>> = check
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (name, state) in [
        ("API_KEY", "missing"),
        ("DB_PASSWORD", "ok"),
        ("OLD_TOKEN", "unused"),
    ] {
        assert!(
            rows.iter()
                .any(|r| r.len() >= 2 && r[0] == name && r[1] == state),
            "{name} is not {state}:\n{}",
            check.stdout
        );
    }
    assert!(
        !format!("{}{}", check.stdout, check.stderr).contains("SNTL-"),
        "a value is shown:\n{}{}",
        check.stdout,
        check.stderr
    );

    project.write_secrets("DB_PASSWORD=e2e-db-password-1\n");
    refused(
        &project,
        &["templates/app.env.j2", "secrets.API_KEY", "secrets file"],
    );
    let good_secrets = "DB_PASSWORD=e2e-db-password-1\nAPI_KEY=e2e-api-key-1\n";
    project.write_secrets(good_secrets);

    std::fs::remove_file(project.root().join(&secrets)).unwrap();
    refused(&project, &[&secrets, "cannot read the secrets file"]);
    project.write_secrets(good_secrets);

    let template = project.root().join("templates/app.env.j2");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(
        &template,
        format!("{text}\nFEATURE={{{{ vars.feature_flag }}}}\n"),
    )
    .unwrap();
    refused(&project, &["templates/app.env.j2", "feature_flag"]);
    std::fs::write(&template, text).unwrap();

    project.write(
        "playbooks/deploy.yml",
        "steps:\n  - preflight\n  - launch_rockets\n",
    );
    refused(
        &project,
        &[
            "playbooks/deploy.yml",
            "unknown step `launch_rockets`",
            "switch",
        ],
    );
    project.git(&["checkout", "--", "playbooks/deploy.yml"]);

    project.write("migrations/README", "uncommitted\n");
    project.git(&["add", "migrations/README"]);
    refused(&project, &["uncommitted changes", "--allow-dirty"]);
    project.commit("the change, committed");

    let head = project.git(&["rev-parse", "HEAD"]);
    let untested = project
        .slipway()
        .args([
            "deploy",
            &project.env,
            "--expect-commit",
            "0123456789abcdef",
        ])
        .run();
    untested
        .assert_code(2)
        .assert_stderr_has(head.trim())
        .assert_stderr_has("the commit that was tested");
}
