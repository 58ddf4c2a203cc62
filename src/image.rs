//! Images without a registry: the app image is built on the workstation from the release's
//! commit, the database and nginx images from `templates/images/`, and each is streamed to
//! a node over its SSH connection (`docker save | docker load`) only when the node lacks it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::config::Environment;
use crate::host::Input;
use crate::layers;
use crate::node::{quote, Node};
use crate::render::Images;

/// One build of the application.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// `<sha7>-<UTC timestamp>`.
    pub name: String,
    pub commit: String,
    pub built_at: String,
    pub image: String,
    pub image_id: String,
}

/// Resolves `git_ref` in the project's repository and names its release: the one already
/// built for that commit on this workstation, or a new `<sha7>-<UTC timestamp>`.
pub async fn resolve(root: &Path, app: &str, git_ref: &str) -> anyhow::Result<(String, String)> {
    let out = Command::new("git")
        .current_dir(root)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{git_ref}^{{commit}}"),
        ])
        .output()
        .await
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "`{git_ref}` is not a commit, branch or tag of the repository at {}",
            root.display()
        );
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if let Some(name) = built_release(app, &commit).await? {
        return Ok((name, commit));
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    Ok((format!("{}-{stamp}", &commit[..7]), commit))
}

/// The newest release already built here from `commit`, if any.
async fn built_release(app: &str, commit: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("docker")
        .args([
            "images",
            "--filter",
            &format!("label=slipway.app={app}"),
            "--filter",
            &format!("label=slipway.commit={commit}"),
            "--format",
            "{{.Tag}}",
        ])
        .output()
        .await
        .context("cannot run docker on this machine")?;
    let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|t| t.starts_with(&commit[..7]))
        .map(String::from)
        .collect();
    tags.sort();
    Ok(tags.pop())
}

/// Whether the working tree has changes that a build from a commit leaves out.
pub async fn dirty(root: &Path) -> bool {
    Command::new("git")
        .current_dir(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .await
        .is_ok_and(|out| !out.stdout.is_empty())
}

/// Builds the app image from the commit's tree (never from uncommitted files).
pub async fn build_app(env: &Environment, name: &str, commit: &str) -> anyhow::Result<Release> {
    let build = &env.settings.build;
    let tag = format!("slipway/{}:{name}", env.settings.app);
    if let Some(image_id) = local_image_id(&tag).await? {
        return Ok(Release {
            name: name.to_string(),
            commit: commit.to_string(),
            built_at: String::new(),
            image_id,
            image: tag,
        });
    }
    let built_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let context = build.context.trim_matches('/');
    let tree = if context.is_empty() || context == "." {
        commit.to_string()
    } else {
        format!("{commit}:{context}")
    };
    let script = format!(
        "set -o pipefail; git archive --format=tar {tree} | docker build -q -t {tag} -f {file} \
         --label slipway.app={app} --label slipway.release={name} --label slipway.commit={commit} \
         --build-arg VERSION={name} --build-arg GIT_COMMIT={commit} --build-arg BUILD_TIME={built_at} -",
        tree = quote(&tree),
        tag = quote(&tag),
        file = quote(&build.dockerfile),
        app = quote(&env.settings.app),
    );
    local_sh(&env.root, &script).await.with_context(|| {
        format!(
            "building the app image from {} at {}",
            build.context,
            &commit[..7]
        )
    })?;

    Ok(Release {
        name: name.to_string(),
        commit: commit.to_string(),
        built_at,
        image_id: local_image_id(&tag)
            .await?
            .context("the image just built is missing")?,
        image: tag,
    })
}

/// Builds the database and nginx images if the workstation lacks them. Their tags carry a
/// hash of their build files, so a changed Dockerfile gives a new tag.
pub async fn build_infra(root: &Path) -> anyhow::Result<Images> {
    Ok(Images {
        postgres: build_dir_image(root, "postgres").await?,
        nginx: build_dir_image(root, "nginx").await?,
    })
}

/// The infra image tags without building them (for rendering and checks).
pub fn infra_tags(root: &Path) -> anyhow::Result<Images> {
    Ok(Images {
        postgres: dir_tag(root, "postgres")?,
        nginx: dir_tag(root, "nginx")?,
    })
}

async fn build_dir_image(root: &Path, name: &str) -> anyhow::Result<String> {
    let tag = dir_tag(root, name)?;
    if local_image_id(&tag).await?.is_some() {
        return Ok(tag);
    }
    let dir = root.join("templates/images").join(name);
    local_sh(
        root,
        &format!(
            "docker build -q -t {} {}",
            quote(&tag),
            quote(&dir.to_string_lossy())
        ),
    )
    .await
    .with_context(|| format!("building the {name} image from {}", dir.display()))?;
    Ok(tag)
}

fn dir_tag(root: &Path, name: &str) -> anyhow::Result<String> {
    let dir = root.join("templates/images").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();

    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        hash.update(std::fs::read(&file)?);
    }
    Ok(format!(
        "slipway/{name}:{}",
        &hex::encode(hash.finalize())[..12]
    ))
}

/// The image ID the workstation's engine has for `tag`.
pub async fn local_image_id(tag: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .await
        .context("cannot run docker on this machine")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// Images saved on this machine for one run: each tag is saved once (`docker save`) and
/// its archive, index and size read once, however many nodes need it. Saving a 150 MB
/// image once per node made eight nodes do eight saves on the workstation at once.
#[derive(Default)]
pub struct Saved {
    archives: tokio::sync::Mutex<HashMap<String, Arc<layers::Saved>>>,
}

impl Saved {
    /// The saved archive of `tag`, saving it on the first call.
    async fn get(&self, tag: &str) -> anyhow::Result<Arc<layers::Saved>> {
        let mut archives = self.archives.lock().await;
        if let Some(saved) = archives.get(tag) {
            return Ok(saved.clone());
        }
        let archive = layers::save(tag).await?;
        let saved = tokio::task::spawn_blocking(move || layers::Saved::read(archive))
            .await?
            .with_context(|| format!("cannot read the saved image {tag}"))?;
        let saved = Arc::new(saved);
        archives.insert(tag.to_string(), saved.clone());
        Ok(saved)
    }
}

/// Ships `tag` to the node unless it already has the same image. Returns bytes sent.
pub async fn ship(node: &Node, tag: &str, saved: &Saved) -> anyhow::Result<u64> {
    if node.host.is_local() {
        return Ok(0);
    }
    let local = local_image_id(tag)
        .await?
        .with_context(|| format!("image {tag} is not built"))?;
    let remote = node
        .run(
            &format!("docker image inspect --format '{{{{.Id}}}}' {}", quote(tag)),
            Input::None,
        )
        .await?;
    if remote.success() && remote.stdout().trim() == local {
        return Ok(0);
    }

    let (size, layers) = local_size_and_layers(tag).await?;
    let remote = remote_layers(node).await?;
    check_room(tag, size, &layers, &remote)?;

    let archive = saved.get(tag).await?;
    let plan = archive.plan(&remote.chains)?;
    tracing::info!(node = %node.name, %tag, skipped = plan.skip.len(), layers = plan.layers, "ship");
    let stream = layers::filtered(archive, plan)?;

    let before = node.host.bytes_sent();
    let loaded = node
        .run("docker load -q", Input::Stream(Box::pin(stream)))
        .await?;
    if !loaded.success() {
        bail!(
            "docker load of {tag} failed on the node: {}",
            loaded.tail(4)
        );
    }
    Ok(node.host.bytes_sent() - before)
}

/// What a node's engine holds: free bytes under its root directory, that directory, and
/// the chain IDs of every layer of its images.
struct RemoteLayers {
    free: u64,
    root: String,
    chains: HashSet<String>,
}

async fn remote_layers(node: &Node) -> anyhow::Result<RemoteLayers> {
    let script = r#"root=$(docker info --format '{{.DockerRootDir}}') &&
        df -Pk "$root" | awk 'NR == 2 {print $4 * 1024}' && echo "$root" &&
        docker image ls -q | sort -u | xargs -r docker image inspect --format '{{range .RootFS.Layers}}{{.}} {{end}}'"#;
    let out = node.sh(script).await?;
    let mut lines = out.lines();
    let free = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let root = lines.next().unwrap_or("/var/lib/docker").trim().to_string();
    let rest: Vec<&str> = lines.collect();
    Ok(RemoteLayers {
        free,
        root,
        chains: layers::node_chains(&rest.join("\n")),
    })
}

/// Refuses to send `tag` when the node's Docker root cannot hold it (FC-20), before a byte
/// is transferred. `docker load` unpacks the archive under that directory and then
/// registers the layers the node lacks: room for the image's size, and as much again when
/// any layer is new, is asked for.
fn check_room(
    tag: &str,
    size: u64,
    diff_ids: &[String],
    remote: &RemoteLayers,
) -> anyhow::Result<()> {
    let has_new = layers::chain_ids(diff_ids)
        .iter()
        .any(|chain| !remote.chains.contains(chain));
    let needed = bytes_needed(size, has_new);
    if remote.free < needed {
        bail!(
            "not enough disk on the node for {tag}: loading it needs about {needed} bytes under \
             {}, and {} bytes are free; free space there (`docker system df` on the node; a \
             lower keep_releases keeps fewer old images), then deploy again",
            remote.root,
            remote.free
        );
    }
    Ok(())
}

/// The room `docker load` needs: the archive, plus the unpacked layers when any is new,
/// plus a margin for the engine's own metadata.
fn bytes_needed(image_size: u64, has_new_layers: bool) -> u64 {
    const MARGIN: u64 = 64 << 20;
    let layers = if has_new_layers { image_size } else { 0 };
    image_size + layers + MARGIN
}

/// The image's size in bytes and its layer digests, from the workstation's engine.
async fn local_size_and_layers(tag: &str) -> anyhow::Result<(u64, Vec<String>)> {
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Size}}{{range .RootFS.Layers}} {{.}}{{end}}",
            tag,
        ])
        .output()
        .await
        .context("cannot run docker on this machine")?;
    if !out.status.success() {
        bail!("image {tag} is not built");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let size = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    Ok((size, words.map(str::to_string).collect()))
}

/// Runs a shell script on the workstation; the error quotes the end of its output.
async fn local_sh(root: &Path, script: &str) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .current_dir(root)
        .arg("-c")
        .arg(script)
        .output()
        .await
        .context("cannot run bash on this machine")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.trim_end().lines().collect();
        bail!("{}", lines[lines.len().saturating_sub(12)..].join("\n"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::bytes_needed;

    #[test]
    fn a_new_layer_needs_room_for_the_archive_and_the_unpacked_image() {
        let margin = 64 << 20;
        assert_eq!(bytes_needed(1000, true), 2000 + margin);
        assert_eq!(bytes_needed(1000, false), 1000 + margin);
    }
}
