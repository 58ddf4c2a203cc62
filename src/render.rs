//! Renders the files a node needs from the minijinja templates in `templates/`.
//!
//! Undefined variables are errors (strict mode), so a missing value stops the deploy
//! before any node is touched.

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::{path_loader, AutoEscape, Environment as Jinja, UndefinedBehavior};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{Environment, Secrets};
use crate::error::Error;
use crate::paths::Paths;

pub const INFRA_COMPOSE: &str = "infra.compose.yml.j2";
pub const APP_COMPOSE: &str = "app.compose.yml.j2";
pub const APP_ENV: &str = "app.env.j2";
pub const NGINX: &str = "nginx.conf.j2";

/// Every template a deploy renders.
pub const ALL: &[&str] = &[INFRA_COMPOSE, APP_COMPOSE, APP_ENV, NGINX];

/// Names of the images an environment runs.
#[derive(Debug, Clone, Serialize)]
pub struct Images {
    pub postgres: String,
    pub nginx: String,
}

/// The release a template is rendered for.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseVars {
    pub name: String,
    pub commit: String,
    pub image: String,
}

pub struct Renderer {
    jinja: Jinja<'static>,
}

impl Renderer {
    pub fn new(root: &Path) -> Self {
        let mut jinja = Jinja::new();
        jinja.set_undefined_behavior(UndefinedBehavior::Strict);
        // Compose, env and nginx files are written as they are: no HTML or JSON escaping.
        jinja.set_auto_escape_callback(|_| AutoEscape::None);
        jinja.set_loader(path_loader(root.join("templates")));
        jinja.set_keep_trailing_newline(true);
        jinja.add_filter("dotenv", dotenv_quote);
        Renderer { jinja }
    }

    /// Renders `template` with `context`; errors name the template, line and variable.
    pub fn render(&self, template: &str, context: &Value) -> Result<String, Error> {
        let file = format!("templates/{template}");
        let tmpl = self.jinja.get_template(template).map_err(|e| {
            Error::config(&file, describe(&e), "create the template or fix its syntax")
        })?;
        tmpl.render(context).map_err(|e| {
            let mut message = describe(&e);
            let missing = missing_variables(&tmpl.undeclared_variables(true), context);
            if e.kind() == minijinja::ErrorKind::UndefinedError && !missing.is_empty() {
                message = format!("undefined variable `{}`: {message}", missing.join("`, `"));
            }
            let fix = if missing.iter().any(|m| m.starts_with("secret_values.")) {
                "secret values reach app.env.j2 only (the env-file fallback); elsewhere use \
                 `secrets.NAME`, the secret's file name, or add the secret to inventory/<env>.env"
            } else if missing.iter().any(|m| m.starts_with("secrets.")) {
                "add the secret to the environment's secrets file (inventory/<env>.env)"
            } else {
                "define the variable under `vars:` in inventory/all.yml or the environment's file"
            };
            Error::config(&file, message, fix)
        })
    }

    /// The secrets `template` uses (`secrets.NAME` or `secret_values.NAME`), by name.
    pub fn secrets_used(&self, template: &str) -> Result<BTreeSet<String>, Error> {
        let tmpl = self.jinja.get_template(template).map_err(|e| {
            Error::config(
                format!("templates/{template}"),
                describe(&e),
                "create the template or fix its syntax",
            )
        })?;
        Ok(tmpl
            .undeclared_variables(true)
            .iter()
            .filter_map(|v| {
                v.strip_prefix("secrets.")
                    .or_else(|| v.strip_prefix("secret_values."))
            })
            .map(|name| name.split('.').next().unwrap_or(name).to_string())
            .collect())
    }

    /// The secrets any template uses.
    pub fn secrets_needed(&self) -> Result<BTreeSet<String>, Error> {
        let mut needed = BTreeSet::new();
        for template in ALL {
            needed.extend(self.secrets_used(template)?);
        }
        Ok(needed)
    }
}

/// Whether a dotted name (`vars.feature_flag`) resolves in the context.
fn defined(context: &Value, name: &str) -> bool {
    let mut at = context;
    for part in name.split('.') {
        match at.get(part) {
            Some(next) => at = next,
            None => return false,
        }
    }
    true
}

/// The dotted names a template uses that the context does not hold.
fn missing_variables(used: &std::collections::HashSet<String>, context: &Value) -> Vec<String> {
    let mut missing: Vec<String> = used
        .iter()
        .filter(|name| !defined(context, name))
        .cloned()
        .collect();
    missing.sort();
    missing
}

fn describe(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    if let Some(line) = err.line() {
        if !text.contains("line") {
            text.push_str(&format!(" (line {line})"));
        }
    }
    text
}

/// Renders every template once for `node` with a stand-in release, so an undefined
/// variable or a syntax error surfaces before any node is touched.
pub fn check_all(
    env: &Environment,
    node: &str,
    renderer: &Renderer,
    images: &Images,
) -> Result<(), Error> {
    let release = ReleaseVars {
        name: "0000000-check".into(),
        commit: "0".repeat(40),
        image: "slipway/check".into(),
    };
    let paths = Paths::new(env);
    let ctx = context(
        env,
        node,
        &paths,
        images,
        Some(&release),
        Some("blue"),
        Some("blue"),
    );
    for template in ALL {
        if *template == APP_ENV {
            renderer.render(template, &with_secret_values(ctx.clone(), &env.secrets))?;
        } else {
            renderer.render(template, &ctx)?;
        }
    }
    Ok(())
}

/// The context of `app.env.j2`: `context` plus `secret_values`, each secret's value by
/// name. It is the fallback for an app that can only read environment variables: the env
/// file is written 0600, but `docker inspect` shows every variable to whoever can run it.
/// No other template gets the values.
pub fn with_secret_values(mut ctx: Value, secrets: &Secrets) -> Value {
    let values: std::collections::BTreeMap<&str, &str> = secrets
        .names()
        .filter_map(|name| Some((name, secrets.get(name)?)))
        .collect();
    ctx["secret_values"] = json!(values);
    ctx
}

/// The `dotenv` filter: `value` double-quoted for a compose env file, with `\`, `"` and `$`
/// escaped and line breaks written `\n`, so the container receives it byte for byte.
fn dotenv_quote(value: String) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '$' => quoted.push_str("\\$"),
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The database as one node's templates see it: `host` and `port` are what its app
/// connects to, `publish` the `address:port` the node offers its database on to the
/// other nodes (a shared database's node only), `runs_here` whether it runs one.
fn database_vars(env: &Environment, node: &str) -> Value {
    let s = &env.settings;
    let db = &s.database;
    let runs_here = db.node.as_deref().is_none_or(|n| n == node);
    let mut vars = json!({
        "name": db.name,
        "user": db.user,
        "host": "db",
        "port": 5432,
        "publish": null,
        "runs_here": runs_here,
    });
    let Some(address) = db.shared_address() else {
        return vars;
    };
    let address = if address.contains(':') {
        format!("[{address}]")
    } else {
        address
    };
    if runs_here {
        vars["publish"] = json!(format!("{address}:{}", db.port));
    } else {
        vars["host"] = json!(address.trim_matches(['[', ']']));
        vars["port"] = json!(db.port);
    }
    vars
}

/// The variables every template sees for one node of an environment.
pub fn context(
    env: &Environment,
    node: &str,
    paths: &Paths,
    images: &Images,
    release: Option<&ReleaseVars>,
    color: Option<&str>,
    active: Option<&str>,
) -> Value {
    let s = &env.settings;
    let spec = s.nodes.iter().find(|n| n.name == node);
    let mut vars = s.vars.clone();
    if let Some(spec) = spec {
        vars.extend(spec.vars.clone());
    }

    let mut ctx = json!({
        "app": s.app,
        "env": env.name,
        "node": {
            "name": node,
            "address": spec.and_then(|n| n.address.clone()),
            "labels": spec.map(|n| n.labels.clone()).unwrap_or_default(),
        },
        "infra_project": paths.infra_project(),
        "network": paths.network(),
        "paths": {
            "base": paths.base(),
            "secrets": paths.secrets_dir(),
            "nginx": paths.nginx_dir(),
            "snapshots": paths.snapshots_dir(),
        },
        "images": images,
        "database": database_vars(env, node),
        "health": s.health,
        "http_port": s.http_port,
        "http_bind": s.http_bind,
        "stop_grace_seconds": s.stop_grace_seconds,
        "secrets": env.secrets.file_map(),
        "vars": vars,
        "active": active,
        // What the node's engine supports; a deploy fills it in at preflight.
        "engine": {"start_interval": false},
    });

    if let (Some(release), Some(color)) = (release, color) {
        ctx["release"] = json!(release);
        ctx["color"] = json!(color);
        ctx["color_project"] = json!(paths.color_project(color));
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Environment;

    /// An environment `unit` of this repository's `inventory/all.yml` and the given
    /// environment file, with two sample secrets.
    fn sample_env(dir: &std::path::Path, env_file: &str) -> Environment {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(dir.join("inventory")).unwrap();
        std::fs::copy(
            root.join("inventory/all.yml"),
            dir.join("inventory/all.yml"),
        )
        .unwrap();
        std::fs::write(dir.join("inventory/unit.yml"), env_file).unwrap();
        let mut env = Environment::load_without_secrets(dir, "unit").unwrap();
        env.secrets = crate::config::Secrets::from_pairs([
            ("DB_PASSWORD", "unit-db-password"),
            ("API_KEY", "unit-api-key"),
        ]);
        env
    }

    /// With `database.node`, that node publishes its database on its address and the
    /// others' apps connect there; neither starts a database of its own in its env file.
    #[test]
    fn a_shared_database_is_published_by_its_node_and_reached_by_the_others() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let env = sample_env(
            dir.path(),
            "database: {node: n1, address: 10.1.1.1, port: 6543}\nnodes:\n  - {name: n1, address: 10.1.1.1, user: d}\n  \
             - {name: n2, address: 10.1.1.2, user: d}\n",
        );
        let paths = Paths::new(&env);
        let images = Images {
            postgres: "slipway/postgres:x".into(),
            nginx: "slipway/nginx:x".into(),
        };
        let renderer = Renderer::new(root);
        let render = |node: &str, template: &str| {
            let ctx = context(&env, node, &paths, &images, None, None, None);
            renderer.render(template, &ctx).unwrap()
        };

        let infra: serde_yaml::Value = serde_yaml::from_str(&render("n1", INFRA_COMPOSE)).unwrap();
        assert_eq!(infra["services"]["db"]["ports"][0], "10.1.1.1:6543:5432");
        let infra: serde_yaml::Value = serde_yaml::from_str(&render("n2", INFRA_COMPOSE)).unwrap();
        assert!(infra["services"]["db"]["ports"].is_null());

        let own = render("n1", APP_ENV);
        assert!(
            own.contains("DATABASE_HOST=db\nDATABASE_PORT=5432\n"),
            "{own}"
        );
        let other = render("n2", APP_ENV);
        assert!(
            other.contains("DATABASE_HOST=10.1.1.1\nDATABASE_PORT=6543\n"),
            "{other}"
        );
    }

    /// The env-file fallback: only app.env.j2 sees secret values, quoted so compose hands
    /// the container every byte (`\$` is a literal `$` in compose's double quotes).
    #[test]
    fn secret_values_reach_the_env_file_quoted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        std::fs::write(
            templates.join(APP_ENV),
            "API_KEY={{ secret_values.API_KEY | dotenv }}\n",
        )
        .unwrap();
        std::fs::write(templates.join(NGINX), "key {{ secret_values.API_KEY }};\n").unwrap();
        let renderer = Renderer::new(dir.path());
        let secrets =
            crate::config::Secrets::from_pairs([("API_KEY", "SNTL-7q$P&x 'y\"z;#*\\b\nc")]);

        let ctx = with_secret_values(json!({}), &secrets);
        assert_eq!(
            renderer.render(APP_ENV, &ctx).unwrap(),
            "API_KEY=\"SNTL-7q\\$P&x 'y\\\"z;#*\\\\b\\nc\"\n"
        );
        let refused = renderer.render(NGINX, &json!({})).unwrap_err();
        assert!(
            refused.hints().concat().contains("app.env.j2 only"),
            "{:?}",
            refused.hints()
        );
        assert_eq!(
            renderer
                .secrets_used(APP_ENV)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["API_KEY"]
        );
    }

    /// Renders every template of this repository for a sample environment and checks that
    /// the compose files are valid YAML with the expected names.
    #[test]
    fn repository_templates_render_to_valid_compose_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let env = sample_env(
            dir.path(),
            "nodes:\n  - {name: n1, address: 10.1.1.1, user: deploy}\n",
        );

        let paths = Paths::new(&env);
        let images = Images {
            postgres: "slipway/postgres:x".into(),
            nginx: "slipway/nginx:x".into(),
        };
        let release = ReleaseVars {
            name: "abcdef1-20261203T000000Z".into(),
            commit: "a".repeat(40),
            image: "slipway/events:abcdef1-20261203T000000Z".into(),
        };
        let ctx = context(
            &env,
            "n1",
            &paths,
            &images,
            Some(&release),
            Some("green"),
            Some("blue"),
        );
        let renderer = Renderer::new(root);

        let infra: serde_yaml::Value =
            serde_yaml::from_str(&renderer.render(INFRA_COMPOSE, &ctx).unwrap()).unwrap();
        assert_eq!(infra["name"], "events-unit");
        assert!(
            infra["services"]["db"]["ports"].is_null(),
            "the database publishes no port"
        );

        let app: serde_yaml::Value =
            serde_yaml::from_str(&renderer.render(APP_COMPOSE, &ctx).unwrap()).unwrap();
        assert_eq!(app["name"], "events-unit-green");
        assert_eq!(
            app["services"]["app"]["networks"]["app"]["aliases"][0],
            "app-green"
        );
        assert!(
            app["services"]["app"]["ports"].is_null(),
            "the app publishes no port"
        );
        assert_eq!(
            app["services"]["app"]["healthcheck"]["test"][1],
            "events-server"
        );
        assert_eq!(
            app["secrets"]["api_key"]["file"], "./secrets/api_key",
            "each release mounts its own copy of the secrets"
        );
        assert_eq!(
            renderer
                .secrets_needed()
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["API_KEY", "DB_PASSWORD"]
        );
        let env_file = renderer.render(APP_ENV, &ctx).unwrap();
        assert!(env_file.contains("API_KEY_FILE=/run/secrets/api_key\n"));
        assert!(
            !env_file.contains("unit-api-key"),
            "no secret value in the env file"
        );

        let nginx = renderer.render(NGINX, &ctx).unwrap();
        assert!(nginx.contains("http://app-blue:8080"), "{nginx}");
    }
}
