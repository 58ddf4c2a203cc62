//! The `local` connection kind: the same deploy against this machine's own Docker.

use crate::support::{http_get, sh, Project};

#[test]
fn local_connection_deploys_to_the_workstation_docker() {
    let project = Project::new("e2e-local", 18107, 0);
    let state = project.root().join("state");
    project.write(
        &format!("inventory/{}.yml", project.env),
        &format!(
            "state_dir: {}\nhttp_port: {}\nhttp_bind: 127.0.0.1\ndrain_seconds: 1\nstop_grace_seconds: 6\n\
             nodes:\n  - name: workstation\n    connection: local\n",
            state.display(),
            project.http_port
        ),
    );
    project.commit("local inventory");

    let run = project.deploy();
    let answer = http_get(&format!("http://127.0.0.1:{}/version", project.http_port));
    cleanup_local(&project.env);

    run.assert_code(0);
    let (code, body) = answer.expect("nginx answers on 127.0.0.1");
    assert_eq!(code, 200);
    assert!(body["version"].as_str().unwrap().len() > 8, "{body}");
}

fn cleanup_local(env: &str) {
    let slug = format!("events-{env}");
    sh(&format!(
        "for p in {slug} {slug}-blue {slug}-green; do \
           docker ps -aq --filter label=com.docker.compose.project=$p | xargs -r docker rm -f >/dev/null; done; \
         docker volume ls -q --filter label=com.docker.compose.project={slug} | xargs -r docker volume rm >/dev/null; \
         docker network rm {slug} >/dev/null 2>&1; true"
    ));
}
