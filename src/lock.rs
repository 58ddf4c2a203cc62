//! The environment's lock on a node.
//!
//! `flock` on `<base>/lock`, held by a command that lives as long as our SSH channel (or
//! local pipe): when slipway exits, is killed, or loses its connection, the command's stdin
//! closes, it exits, and the kernel drops the lock. Nothing is ever left stale. A JSON file
//! beside the lock says who holds it and what step they are in; it is informational only.
//! When a step opens the connection again after a loss (a migration, FC-12), the lock is
//! taken again for the same deploy, or given up when another operation took it meanwhile
//! ([`Lock::hold_again`]).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::host::{Held, Input};
use crate::node::{quote, Node};

/// Exit code `flock -E` uses when the lock is taken.
const BUSY: i32 = 75;

/// Who holds a lock, as written beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub deploy_id: String,
    pub operation: String,
    pub started_at: String,
    pub step: String,
}

impl Holder {
    pub fn new(deploy_id: &str, operation: &str) -> Self {
        Holder {
            user: whoami(),
            host: hostname(),
            pid: std::process::id(),
            deploy_id: deploy_id.to_string(),
            operation: operation.to_string(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            step: "lock".into(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{}@{} pid {} ({} {}, started {}, step `{}`)",
            self.user,
            self.host,
            self.pid,
            self.operation,
            self.deploy_id,
            self.started_at,
            self.step
        )
    }
}

/// A held lock. Release it explicitly; dropping it also frees the lock once the channel
/// closes.
pub struct Lock {
    /// The command holding the flock; `None` once the lock was lost for good.
    held: Option<Box<dyn Held>>,
    holder: Holder,
    /// The node's connection generation the holding command runs on
    /// ([`crate::host::Host::generation`]).
    generation: u64,
}

/// The lock went with a lost connection and could not be taken again for the same deploy:
/// another operation held it meanwhile. `next` says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Lost {
    message: String,
    pub next: String,
}

/// How long [`Lock::hold_again`] waits for the node to end this deploy's own holding
/// command of the lost connection.
const OLD_SESSION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes the lock or fails at once with the holder's details (exit code 3).
pub async fn acquire(node: &Node, holder: Holder) -> anyhow::Result<Lock> {
    refuse_network_filesystem(node).await?;
    let generation = node.host.generation();
    let held = match try_take(node).await? {
        Taken::Held(held) => held,
        Taken::Busy => return Err(refused(node).await),
    };
    let lock = Lock {
        held: Some(held),
        holder,
        generation,
    };
    write_holder(node, &lock.holder).await?;
    Ok(lock)
}

enum Taken {
    Held(Box<dyn Held>),
    Busy,
}

/// One attempt at the flock, without waiting.
async fn try_take(node: &Node) -> anyhow::Result<Taken> {
    let base = quote(node.paths.base());
    let lock = quote(&node.paths.lock());
    let command = format!(
        "mkdir -p {base} && exec flock -n -E {BUSY} {lock} sh -c 'echo acquired; exec cat >/dev/null'"
    );
    let mut held = node.host.hold(&command).await?;
    if held.read_line().await?.as_deref() == Some("acquired") {
        return Ok(Taken::Held(held));
    }

    let code = held.release().await?;
    if code != Some(BUSY) {
        anyhow::bail!(
            "cannot take the lock {} (flock exited with {code:?}); check that flock exists and the state directory is writable",
            node.paths.lock()
        );
    }
    Ok(Taken::Busy)
}

/// The refusal of a lock someone holds, naming them (exit code 3).
async fn refused(node: &Node) -> anyhow::Error {
    Error::Locked {
        node: node.name.clone(),
        env: node.env.name.clone(),
        holder: read_holder(node)
            .await
            .ok()
            .flatten()
            .map_or("an unknown holder (no holder file)".into(), |h| {
                h.describe()
            }),
    }
    .into()
}

/// File system types on which `flock` may not exclude a deploy from another machine
/// (FC-16): slipway refuses to lock there rather than risk two deploys at once.
const NETWORK_FILESYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb",
    "smb2",
    "smb3",
    "smbfs",
    "ncpfs",
    "afs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "beegfs",
    "davfs",
    "sshfs",
];

fn is_network_filesystem(kind: &str) -> bool {
    let kind = kind.trim().to_ascii_lowercase();
    let base = kind.strip_prefix("fuse.").unwrap_or(&kind);
    NETWORK_FILESYSTEMS.contains(&base)
}

async fn refuse_network_filesystem(node: &Node) -> anyhow::Result<()> {
    let base = quote(node.paths.base());
    let probe = format!(
        "mkdir -p {base} && (findmnt -n -o FSTYPE -T {base} 2>/dev/null || stat -f -c %T {base})"
    );
    let kind = node.sh(&probe).await?;
    if is_network_filesystem(&kind) {
        anyhow::bail!(
            "the state directory {} is on a network file system ({}), where a lock may not \
             keep two deploys apart; set `state_dir` to a local path on the node",
            node.paths.base(),
            kind.trim()
        );
    }
    Ok(())
}

impl Lock {
    /// Records the step the holder is in, for whoever is refused meanwhile.
    pub async fn step(&mut self, node: &Node, step: &str) {
        self.holder.step = step.to_string();
        if self.held.is_none() || node.host.generation() != self.generation {
            return;
        }
        if let Err(e) = write_holder(node, &self.holder).await {
            tracing::warn!(node = %node.name, "cannot update the lock holder file: {e:#}");
        }
    }

    /// The step the holder record names (the one in progress).
    pub fn step_name(&self) -> &str {
        &self.holder.step
    }

    /// Removes the holder file while still holding the lock, then lets go. A lock that
    /// went with a lost connection is taken again first (see [`Lock::hold_again`]), so a
    /// holder file another operation wrote meanwhile is never removed.
    pub async fn release(mut self, node: &Node) -> anyhow::Result<()> {
        if self.held.is_some() {
            self.hold_again(node).await?;
        }
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let holder = quote(&node.paths.lock_holder());
        node.run(&format!("rm -f {holder}"), Input::None).await?;
        held.release().await?;
        Ok(())
    }

    /// After the node's connection was opened again ([`crate::host::Host::reconnect`]),
    /// the command that held the flock has ended with the old connection and the node has
    /// let go of the lock. Takes it again for this same deploy, as long as nobody else
    /// took it meanwhile: the record beside the lock must still name this deploy. While the
    /// flock is still held under this deploy's record, the node has not yet ended the old
    /// session; that is waited for, up to 30 s. Anything else means another operation held
    /// the lock while the connection was down: the lock is given up for good and the error
    /// says so, so the node stops. Returns whether the lock was taken again.
    pub async fn hold_again(&mut self, node: &Node) -> anyhow::Result<bool> {
        let now = node.host.generation();
        if now == self.generation || self.held.is_none() {
            return Ok(false);
        }
        self.held = None;

        let deadline = std::time::Instant::now() + OLD_SESSION_WAIT;
        loop {
            let taken = try_take(node).await?;
            let record = read_holder(node).await?;
            let ours = record
                .as_ref()
                .is_some_and(|h| h.deploy_id == self.holder.deploy_id);
            match taken {
                Taken::Held(held) if ours => {
                    self.held = Some(held);
                    self.generation = now;
                    write_holder(node, &self.holder).await?;
                    return Ok(true);
                }
                Taken::Held(held) => {
                    held.release().await?;
                    return Err(self.taken_meanwhile(node, record.as_ref(), false));
                }
                Taken::Busy if ours && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Taken::Busy => return Err(self.taken_meanwhile(node, record.as_ref(), true)),
            }
        }
    }

    /// Why the lock could not be taken again after a reconnect.
    fn taken_meanwhile(&self, node: &Node, record: Option<&Holder>, busy: bool) -> anyhow::Error {
        let message = self.lost_message(node, record, busy);
        let next = format!(
            "what the step did stands (see above); wait for the operation holding the lock \
             (`slipway lock status {}`), then deploy again",
            node.env.name
        );
        Lost { message, next }.into()
    }

    fn lost_message(&self, node: &Node, record: Option<&Holder>, busy: bool) -> String {
        let who = match record {
            Some(h) if h.deploy_id == self.holder.deploy_id => format!(
                "this deploy's own session of the lost connection, which the node has not \
                 ended after {}s",
                OLD_SESSION_WAIT.as_secs()
            ),
            Some(h) => h.describe(),
            None => "another operation, which has removed this deploy's holder record".into(),
        };
        let now = if busy {
            "holds it now"
        } else {
            "held it meanwhile"
        };
        format!(
            "the lock of {env} on {node} was dropped with the lost SSH connection and could \
             not be taken again for deploy {id}: {who} {now}; this node stops here, changing \
             nothing more. See `slipway lock status {env}` and `slipway status {env}`",
            env = node.env.name,
            node = node.name,
            id = self.holder.deploy_id,
        )
    }
}

/// What `lock status` reports for one node.
#[derive(Debug, Clone, Serialize)]
pub struct LockState {
    pub locked: bool,
    pub holder: Option<Holder>,
}

pub async fn status(node: &Node) -> anyhow::Result<LockState> {
    let locked = is_held(node).await?;
    let holder = if locked {
        read_holder(node).await?
    } else {
        None
    };
    Ok(LockState { locked, holder })
}

/// Like [`status`], but reads the holder record even when the lock is free: a record
/// without a held lock is what a killed operation (SIGKILL, a lost machine) leaves.
pub async fn inspect(node: &Node) -> anyhow::Result<LockState> {
    Ok(LockState {
        locked: is_held(node).await?,
        holder: read_holder(node).await?,
    })
}

/// Whether a live session holds the flock right now.
async fn is_held(node: &Node) -> anyhow::Result<bool> {
    let base = quote(node.paths.base());
    let lock = quote(&node.paths.lock());
    let probe = format!("[ -d {base} ] || exit 0; flock -n -E {BUSY} {lock} true");
    let out = node.run(&probe, Input::None).await?;

    match out.code {
        Some(0) => Ok(false),
        Some(BUSY) => Ok(true),
        _ => anyhow::bail!("cannot test the lock: {}", out.tail(3)),
    }
}

/// Removes the holder record of `deploy_id` from a node whose lock is free.
///
/// "Holder gone" means the flock is free: the kernel drops it when the holding session's
/// process or connection dies, so a free flock with a record beside it is a record left
/// behind. The removal runs while holding the flock and checks the record's deploy id
/// again, so it cannot race a deploy that takes the lock meanwhile. A lock a live session
/// still holds is never touched: that is an `Error::Locked` (exit 3).
pub async fn clear_stale(node: &Node, holder: &Holder) -> anyhow::Result<()> {
    let needle = format!(
        "\"deploy_id\": {}",
        serde_json::to_string(&holder.deploy_id)?
    );
    let command = format!(
        "flock -n -E {BUSY} {lock} sh -c 'grep -qF \"$1\" \"$2\" && rm -f \"$2\"' sh {needle} {file}",
        lock = quote(&node.paths.lock()),
        needle = quote(&needle),
        file = quote(&node.paths.lock_holder()),
    );
    let out = node.run(&command, Input::None).await?;
    match out.code {
        Some(0) => Ok(()),
        Some(BUSY) => Err(locked_by(node, holder).into()),
        _ => anyhow::bail!(
            "{}: the holder record changed while it was being cleared (another operation took \
             the lock); run `slipway lock status {}` and look again",
            node.name,
            node.env.name
        ),
    }
}

/// The refusal for a lock that a live session holds.
pub fn locked_by(node: &Node, holder: &Holder) -> Error {
    Error::Locked {
        node: node.name.clone(),
        env: node.env.name.clone(),
        holder: format!(
            "{} (its session is alive, so the lock is not released)",
            holder.describe()
        ),
    }
}

async fn write_holder(node: &Node, holder: &Holder) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(holder)?;
    node.write_file(&node.paths.lock_holder(), json, 0o644)
        .await
}

async fn read_holder(node: &Node) -> anyhow::Result<Option<Holder>> {
    let text = node.read_file(&node.paths.lock_holder()).await?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// `user@host` of whoever runs slipway, as lock holders and the history record it.
pub fn operator() -> String {
    format!("{}@{}", whoami(), hostname())
}

fn whoami() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[cfg(test)]
mod network_fs_tests {
    use super::is_network_filesystem;

    #[test]
    fn network_file_systems_are_told_from_local_ones() {
        for kind in ["nfs4", "cifs", "fuse.sshfs", "ceph", "9p\n"] {
            assert!(is_network_filesystem(kind), "{kind}");
        }
        for kind in [
            "ext4",
            "xfs",
            "overlay",
            "tmpfs",
            "btrfs",
            "ext2/ext3",
            "fuse.fuse-overlayfs",
        ] {
            assert!(!is_network_filesystem(kind), "{kind}");
        }
    }
}
