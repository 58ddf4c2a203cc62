//! The fleet benchmark (issue 4): one release deployed to 1, 2, 4 and 8 harness nodes at
//! once (`--parallel 10`), with the time of the whole run, each node's time, where it
//! went step by step (from the `--json` events), and the SSH logins each node's sshd
//! accepted. Run by `tests/bench-fleet`; it prints figures and asserts no wall-clock time.

use std::time::Instant;

use serde_json::Value;

use crate::support::{harness, sh_ok, HarnessNode, Project, Run};

const COUNTS: [usize; 4] = [1, 2, 4, 8];

/// The `Accepted publickey` lines in the node's sshd log (sshd runs with `-e`, so its
/// log is the container's).
fn logins(node: &HarnessNode) -> usize {
    let out = sh_ok(&format!(
        "docker logs {} 2>&1 | grep -c 'Accepted publickey' || true",
        node.container
    ));
    out.trim().parse().unwrap_or(0)
}

/// `node-1,...,node-<count>`: the first `count` nodes.
fn first(count: usize) -> String {
    (1..=count)
        .map(|i| format!("node-{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The SSH connections slipway logged opening to `node` (`-v`).
fn opened(run: &Run, node: &HarnessNode) -> usize {
    let line = format!("ssh connection opened address={} ", node.address);
    run.stderr.matches(&line).count()
}

/// `2`, or `1..3` when the nodes differ.
fn range(values: &[usize]) -> String {
    let lo = values.iter().min().unwrap_or(&0);
    let hi = values.iter().max().unwrap_or(&0);
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}..{hi}")
    }
}

fn events(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn seconds_at(event: &Value) -> f64 {
    let stamp = event["timestamp"].as_str().unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(stamp)
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
        .unwrap_or(0.0)
}

fn find<'a>(events: &'a [Value], event: &str, step: Option<&str>) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["event"] == event && step.is_none_or(|s| e["step"] == s))
}

/// One timed deploy and what its events and the nodes' sshd logs say about it.
struct Measured {
    count: usize,
    wall: f64,
    /// From `run.started` to the build starting: connecting and locking every node.
    connect_and_lock: f64,
    build: f64,
    /// From the first `node.started` to the last node's end.
    rollout: f64,
    /// Each node's own deploy (`node.succeeded`'s elapsed), in seconds.
    per_node: Vec<f64>,
    /// Per step, in playbook order, the slowest node's time.
    steps: Vec<(String, f64)>,
    logins_per_node: Vec<usize>,
    /// The connections slipway says it opened to each node (`-v`).
    opened_per_node: Vec<usize>,
}

impl Measured {
    fn take(project: &Project, count: usize) -> Measured {
        let nodes = &project.nodes[..count];
        let before: Vec<usize> = nodes.iter().map(logins).collect();
        let started = Instant::now();
        let run = project
            .slipway()
            .args(["-v", "deploy", &project.env, "--json", "--parallel", "10"])
            .args(["--limit", &first(count)])
            .run();
        let wall = started.elapsed().as_secs_f64();
        run.assert_code(0);
        let after: Vec<usize> = nodes.iter().map(logins).collect();

        let events = events(&run);
        let at = |event: &str, step: Option<&str>| {
            find(&events, event, step).map(seconds_at).unwrap_or(0.0)
        };
        let ends: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "node.succeeded")
            .collect();
        let last_end = ends.iter().map(|e| seconds_at(e)).fold(0.0, f64::max);
        let mut steps: Vec<(String, f64)> = Vec::new();
        for e in events.iter().filter(|e| e["event"] == "step.finished") {
            if e["node"].is_null() {
                continue;
            }
            let step = e["step"].as_str().unwrap_or_default();
            let took = e["elapsed_seconds"].as_f64().unwrap_or(0.0);
            match steps.iter_mut().find(|(s, _)| s == step) {
                Some((_, slowest)) => *slowest = slowest.max(took),
                None => steps.push((step.to_string(), took)),
            }
        }
        Measured {
            count,
            wall,
            connect_and_lock: at("step.started", Some("build")) - at("run.started", None),
            build: find(&events, "step.finished", Some("build"))
                .and_then(|e| e["elapsed_seconds"].as_f64())
                .unwrap_or(0.0),
            rollout: last_end - at("node.started", None),
            per_node: ends
                .iter()
                .filter_map(|e| e["elapsed_seconds"].as_f64())
                .collect(),
            steps,
            logins_per_node: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
            opened_per_node: nodes.iter().map(|n| opened(&run, n)).collect(),
        }
    }

    fn row(&self) -> String {
        let mean = self.per_node.iter().sum::<f64>() / self.per_node.len().max(1) as f64;
        let slowest = self.per_node.iter().cloned().fold(0.0, f64::max);
        format!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} |",
            self.count,
            self.wall,
            self.wall / self.count as f64,
            self.connect_and_lock,
            self.build,
            self.rollout,
            mean,
            slowest,
            range(&self.logins_per_node),
            range(&self.opened_per_node),
        )
    }
}

#[test]
#[ignore = "benchmark: run by tests/bench-fleet"]
fn bench_fleet_deploy_to_1_2_4_8_nodes() {
    let available = harness().len();
    assert!(
        available >= 8,
        "the fleet benchmark needs 8 harness nodes, the env has {available}: \
         run it with tests/bench-fleet (SLIPWAY_HARNESS_NODES=8)"
    );
    let project = Project::new("e2e-fleet", 18262, 8);

    let warm = Instant::now();
    project.commit("warm-up release");
    project
        .slipway()
        .args(["deploy", &project.env, "--parallel", "10"])
        .run()
        .assert_code(0);
    println!(
        "\nwarm-up (untimed in the table): one deploy to all 8 nodes, which ships the \
         database and nginx images and the first app image, took {:.0} s",
        warm.elapsed().as_secs_f64()
    );

    let measured: Vec<Measured> = COUNTS
        .iter()
        .map(|&count| {
            project.commit(&format!("release for {count} node(s)"));
            Measured::take(&project, count)
        })
        .collect();
    print_report(&measured);
}

fn print_report(measured: &[Measured]) {
    println!(
        "\nslipway fleet benchmark on this machine: a new release (a new commit, built once) to \
         the first N harness nodes with `--parallel 10`, watch 2 s, drain 1 s (the e2e \
         project's settings)"
    );
    println!(
        "| nodes | total s | total s / node | connect + lock s | build s | rollout s | \
         node deploy s, mean | slowest node s | SSH logins per node (sshd / slipway) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for m in measured {
        println!("{}", m.row());
    }
    if let (Some(one), Some(many)) = (measured.first(), measured.last()) {
        println!(
            "\n{} nodes took {:.2}x the time of {} (goal: at most 1.5x)",
            many.count,
            many.wall / one.wall,
            one.count
        );
    }
    println!("\nslowest node's time per step (s):");
    let steps: Vec<&String> = measured[0].steps.iter().map(|(s, _)| s).collect();
    println!(
        "| step | {} |",
        measured
            .iter()
            .map(|m| format!("{} node(s)", m.count))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("| --- |{}", " --- |".repeat(measured.len()));
    for step in steps {
        let cells: Vec<String> = measured
            .iter()
            .map(|m| {
                let took = m.steps.iter().find(|(s, _)| s == step).map(|(_, t)| *t);
                format!("{:.1}", took.unwrap_or(0.0))
            })
            .collect();
        println!("| {step} | {} |", cells.join(" | "));
    }
}
