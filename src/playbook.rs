//! Playbooks: the steps of an operation as data (`playbooks/<name>.yml`), checked at load
//! so a typo or a step in an impossible place is refused before any node is touched.

use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use crate::error::Error;

/// Built-in step names, in the order a deploy normally runs them.
pub const BUILTIN: &[&str] = &[
    "preflight",
    "ship_images",
    "upload_bundle",
    "ensure_infra",
    "snapshot",
    "migrate",
    "start_color",
    "health_gate",
    "switch",
    "verify",
    "watch",
    "drain",
    "record",
    "cleanup",
];

/// Steps that must come before another one can run.
const REQUIRES: &[(&str, &[&str])] = &[
    ("migrate", &["ensure_infra", "snapshot"]),
    ("snapshot", &["ensure_infra"]),
    (
        "start_color",
        &["ship_images", "upload_bundle", "ensure_infra"],
    ),
    ("health_gate", &["start_color"]),
    ("switch", &["health_gate"]),
    ("verify", &["switch"]),
    ("watch", &["switch"]),
    ("drain", &["switch"]),
    ("cleanup", &["record"]),
];

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Builtin { name: String, params: Params },
    Run(Custom),
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Builtin { name, .. } => name,
            Step::Run(custom) => &custom.name,
        }
    }
}

/// Parameters a built-in step may take; each step reads the ones that concern it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `health_gate`: seconds to wait (default: `health.timeout_seconds`).
    pub timeout_seconds: Option<u64>,
    /// `drain`: seconds the old color keeps serving in-flight requests (default:
    /// `drain_seconds`); `watch`: seconds the new color is watched (default:
    /// `watch_seconds`).
    pub seconds: Option<u64>,
}

/// Where a custom command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// Inside the new release's app container.
    App,
    /// In a shell on the node.
    Node,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Custom {
    pub name: String,
    #[serde(rename = "in")]
    pub place: Place,
    pub command: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    steps: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct Playbook {
    pub file: String,
    pub steps: Vec<Step>,
}

impl Playbook {
    pub fn load(root: &Path, file: &str) -> Result<Self, Error> {
        let text = std::fs::read_to_string(root.join(file)).map_err(|e| {
            Error::config(
                file,
                format!("cannot read the playbook: {e}"),
                "restore it from git",
            )
        })?;
        let parsed: File = serde_yaml::from_str(&text).map_err(|e| {
            Error::config(
                file,
                e.to_string(),
                "a playbook is a mapping with a `steps:` list",
            )
        })?;

        let steps = parsed
            .steps
            .iter()
            .enumerate()
            .map(|(i, v)| {
                parse_step(v)
                    .map_err(|msg| Error::config(file, format!("step {}: {msg}", i + 1), known()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_order(&steps).map_err(|msg| Error::config(file, msg, "reorder the steps"))?;

        Ok(Playbook {
            file: file.to_string(),
            steps,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Builtin { name: n, .. } if n == name))
    }
}

fn known() -> String {
    format!(
        "built-in steps are {}, and `run:` for a custom command",
        BUILTIN.join(", ")
    )
}

fn parse_step(value: &Value) -> Result<Step, String> {
    match value {
        Value::String(name) => builtin(name, Params::default()),
        Value::Mapping(map) if map.len() == 1 => {
            let (key, body) = map.iter().next().expect("one entry");
            let key = key.as_str().ok_or("a step name must be a string")?;
            if key == "run" {
                let custom: Custom = serde_yaml::from_value(body.clone())
                    .map_err(|e| format!("`run`: {e} (it needs name, in: app|node, command)"))?;
                return Ok(Step::Run(custom));
            }
            let params: Params = match body {
                Value::Null => Params::default(),
                other => {
                    serde_yaml::from_value(other.clone()).map_err(|e| format!("`{key}`: {e}"))?
                }
            };
            builtin(key, params)
        }
        _ => Err("write a step as its name, or as `name: {parameters}`".into()),
    }
}

fn builtin(name: &str, params: Params) -> Result<Step, String> {
    if !BUILTIN.contains(&name) {
        return Err(format!("unknown step `{name}`"));
    }
    Ok(Step::Builtin {
        name: name.to_string(),
        params,
    })
}

fn check_order(steps: &[Step]) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for step in steps {
        match step {
            Step::Builtin { name, .. } => {
                if seen.contains(&name.as_str()) {
                    return Err(format!("step `{name}` appears twice"));
                }
                let needs = REQUIRES
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(&[][..], |(_, r)| *r);
                if let Some(missing) = needs.iter().find(|r| !seen.contains(r)) {
                    return Err(format!("step `{name}` needs `{missing}` before it"));
                }
                seen.push(name);
            }
            Step::Run(custom) => {
                if custom.place == Place::App && !seen.contains(&"start_color") {
                    return Err(format!(
                        "custom step `{}` runs in the app, so it needs `start_color` before it",
                        custom.name
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<Step>, String> {
        let file: File = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let steps = file
            .steps
            .iter()
            .map(parse_step)
            .collect::<Result<Vec<_>, _>>()?;
        check_order(&steps)?;
        Ok(steps)
    }

    #[test]
    fn reads_builtins_params_and_custom_steps() {
        let steps = parse(
            "steps: [preflight, ship_images, upload_bundle, ensure_infra, start_color, \
             {run: {name: warm, in: app, command: 'true'}}, {health_gate: {timeout_seconds: 9}}]",
        )
        .unwrap();
        assert_eq!(steps.len(), 7);
        assert_eq!(steps[5].name(), "warm");
        assert!(
            matches!(&steps[6], Step::Builtin { params, .. } if params.timeout_seconds == Some(9))
        );
    }

    #[test]
    fn refuses_unknown_steps_and_bad_order() {
        assert!(parse("steps: [deploy_it]")
            .unwrap_err()
            .contains("unknown step `deploy_it`"));
        assert!(parse("steps: [ensure_infra, migrate]")
            .unwrap_err()
            .contains("needs `snapshot`"));
        assert!(parse("steps: [preflight, preflight]")
            .unwrap_err()
            .contains("twice"));
        assert!(parse("steps: [{health_gate: {wait: 3}}]")
            .unwrap_err()
            .contains("unknown field"));
    }
}
