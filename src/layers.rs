//! Shipping only the layers a node lacks. `docker save` writes every layer of an image, but
//! `docker load` reads a layer's file only when the engine lacks that layer (same chain of
//! parents), so the archive can leave out the layers the node already has: a new release
//! usually differs from the last one in its top layer alone.
//!
//! The archive is saved to a temporary file first, because its `manifest.json` (which maps
//! files to layers) comes after the layers in the stream.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio::process::Command;

/// The chain IDs of a layer stack: the first is its diff ID, each next one the digest of
/// `<parent chain ID> <diff ID>`, as the engine names stored layers.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let chain = match chains.last() {
            None => diff.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff}")))
            ),
        };
        chains.push(chain);
    }
    chains
}

/// The chain IDs of every image a node holds, from one line of diff IDs per image.
pub fn node_chains(lines: &str) -> HashSet<String> {
    lines
        .lines()
        .flat_map(|line| {
            let diffs: Vec<String> = line.split_whitespace().map(String::from).collect();
            chain_ids(&diffs)
        })
        .collect()
}

/// `docker save` of `tag` into a temporary file on this machine.
pub async fn save(tag: &str) -> anyhow::Result<tempfile::TempPath> {
    let path = tempfile::Builder::new()
        .prefix("slipway-image-")
        .suffix(".tar")
        .tempfile()
        .context("cannot make a temporary file for the image")?
        .into_temp_path();
    let out = Command::new("docker")
        .arg("save")
        .arg("-o")
        .arg(&*path)
        .arg(tag)
        .output()
        .await
        .context("cannot run docker save")?;
    if !out.status.success() {
        bail!(
            "docker save {tag} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(path)
}

/// Which files of the archive a node does not need: the layer files whose chain it has.
#[derive(Debug, Default)]
pub struct Plan {
    pub skip: HashSet<String>,
    pub layers: usize,
}

#[derive(serde::Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(serde::Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// A saved image archive on this machine, with the index every node's plan reads.
pub struct Saved {
    archive: tempfile::TempPath,
    index: Index,
}

impl Saved {
    /// Reads the archive's index once (a pass over the whole file).
    pub fn read(archive: tempfile::TempPath) -> anyhow::Result<Self> {
        let index = read_index(&archive)?;
        Ok(Saved { archive, index })
    }

    /// What a node that has the layer chains `present` does not need.
    pub fn plan(&self, present: &HashSet<String>) -> anyhow::Result<Plan> {
        plan_from(&self.index, present)
    }
}

/// Plans from the archive's manifest and image config what to leave out.
fn plan_from((small, links): &Index, present: &HashSet<String>) -> anyhow::Result<Plan> {
    let manifest: Vec<ManifestEntry> = serde_json::from_slice(
        small
            .get("manifest.json")
            .context("the saved image has no manifest.json")?,
    )?;

    let mut plan = Plan::default();
    let mut needed = HashSet::new();
    for entry in &manifest {
        let config: ImageConfig = serde_json::from_slice(
            small
                .get(&entry.config)
                .with_context(|| format!("the saved image lacks {}", entry.config))?,
        )?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            bail!("the saved image's manifest and config disagree on its layers");
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        for (file, chain) in entry.layers.iter().zip(&chains) {
            plan.layers += 1;
            if present.contains(chain) {
                plan.skip.insert(file.clone());
            } else {
                needed.insert(file.clone());
            }
        }
    }

    for file in &needed {
        if let Some(target) = links.get(file) {
            plan.skip.remove(target);
        }
        plan.skip.remove(file);
    }
    Ok(plan)
}

/// The archive's small JSON files by path, and its symbolic links (path to target path).
type Index = (HashMap<String, Vec<u8>>, HashMap<String, String>);

fn read_index(archive: &Path) -> anyhow::Result<Index> {
    let mut tar = tar::Archive::new(File::open(archive)?);
    let mut small = HashMap::new();
    let mut links = HashMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if let Some(target) = entry.link_name()? {
            let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
            let resolved = normalize(&dir.join(target));
            links.insert(path, resolved);
        } else if path.ends_with(".json") && entry.size() < (4 << 20) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            small.insert(path, bytes);
        }
    }
    Ok((small, links))
}

/// `a/../b/c` as `b/c`: link targets in an archive are relative to the link's directory.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Streams the archive without the planned files, for `docker load` on the node.
pub fn filtered(
    saved: Arc<Saved>,
    plan: Plan,
) -> anyhow::Result<impl tokio::io::AsyncRead + Send + Unpin + 'static> {
    let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
    reader.set_nonblocking(true)?;
    std::thread::spawn(move || {
        if let Err(e) = copy_filtered(&saved.archive, &plan.skip, writer) {
            tracing::debug!("stopped writing the image archive: {e:#}");
        }
    });
    Ok(tokio::net::UnixStream::from_std(reader)?)
}

fn copy_filtered(
    archive: &Path,
    skip: &HashSet<String>,
    out: std::os::unix::net::UnixStream,
) -> anyhow::Result<()> {
    let mut tar = tar::Archive::new(File::open(archive)?);
    let mut builder = tar::Builder::new(out);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if skip.contains(&*path.to_string_lossy()) {
            continue;
        }
        let mut header = entry.header().clone();
        match entry.link_name()? {
            Some(target) => builder.append_link(&mut header, &path, target)?,
            None => builder.append_data(&mut header, &path, &mut entry)?,
        }
    }
    builder.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_engine_rule() {
        let diffs = vec!["sha256:aa".to_string(), "sha256:bb".to_string()];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], "sha256:aa");
        let expected = hex::encode(Sha256::digest("sha256:aa sha256:bb"));
        assert_eq!(chains[1], format!("sha256:{expected}"));
    }

    /// An archive shaped like `docker save` output: layer `one` is on the node, `two` not.
    #[test]
    fn a_layer_whose_chain_the_node_has_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let config = r#"{"rootfs":{"diff_ids":["sha256:aa","sha256:bb"]}}"#;
        let manifest = r#"[{"Config":"cfg.json","Layers":["one/layer.tar","two/layer.tar"]}]"#;
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        for (name, data) in [
            ("one/layer.tar", "first layer".as_bytes()),
            ("two/layer.tar", "second layer".as_bytes()),
            ("cfg.json", config.as_bytes()),
            ("manifest.json", manifest.as_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder.finish().unwrap();

        let present = HashSet::from(["sha256:aa".to_string()]);
        let plan = plan_from(&read_index(&path).unwrap(), &present).unwrap();
        assert_eq!(plan.layers, 2);
        assert_eq!(plan.skip, HashSet::from(["one/layer.tar".to_string()]));

        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        copy_filtered(&path, &plan.skip, writer).unwrap();
        let mut names: Vec<String> = tar::Archive::new(reader)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cfg.json", "manifest.json", "two/layer.tar"]);
    }
}
