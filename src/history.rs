//! The release history of an environment on a node: an append-only JSON-lines file. Each
//! append rewrites the file under a temporary name and renames it into place.

use serde::{Deserialize, Serialize};

use crate::host::Input;
use crate::node::{quote, Node};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `deploy` or `rollback`.
    pub action: String,
    pub release: String,
    pub commit: String,
    pub image: String,
    pub image_id: String,
    pub color: String,
    pub deployed_at: String,
    pub deployed_by: String,
    pub deploy_id: String,
    pub schema_version: Option<u64>,
}

impl Record {
    /// A record with only the action and release filled in, for unit tests.
    #[cfg(test)]
    pub fn sample(action: &str, release: &str) -> Record {
        Record {
            action: action.into(),
            release: release.into(),
            commit: "c".repeat(40),
            image: format!("slipway/app:{release}"),
            image_id: String::new(),
            color: "blue".into(),
            deployed_at: String::new(),
            deployed_by: String::new(),
            deploy_id: String::new(),
            schema_version: None,
        }
    }
}

pub async fn append(node: &Node, record: &Record) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');

    let file = quote(&node.paths.history());
    let tmp = quote(&format!("{}.tmp-slipway", node.paths.history()));
    let command = format!(
        "{{ if [ -f {file} ]; then cat {file}; fi; cat; }} > {tmp} && chmod 644 {tmp} && mv -f {tmp} {file}"
    );
    node.sh_with(&command, Input::Bytes(line)).await?;
    Ok(())
}

/// Every record, oldest first; unreadable lines are skipped.
pub async fn read(node: &Node) -> anyhow::Result<Vec<Record>> {
    let text = node
        .read_file(&node.paths.history())
        .await?
        .unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
