//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "slipway",
    version,
    about = "Blue-green deploys of a Docker Compose app over SSH"
)]
pub struct Cli {
    /// Project directory holding inventory/, templates/, playbooks/ and migrations/.
    #[arg(long, global = true, env = "SLIPWAY_ROOT", default_value = ".")]
    pub root: PathBuf,

    /// More detail on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the release, ship it, migrate, and switch traffic to it on each node.
    Deploy {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        rollout: RolloutArgs,
        /// Print the nodes the selection resolves to (name, address, labels) and exit,
        /// without connecting to any.
        #[arg(long)]
        list_nodes: bool,
        /// Git commit, branch or tag to deploy.
        #[arg(long = "ref", default_value = "HEAD")]
        git_ref: String,
        /// Deploy even though the working tree has uncommitted changes (they are left out).
        #[arg(long)]
        allow_dirty: bool,
        /// Refuse unless --ref resolves to this commit (CI: the commit its tests passed on).
        #[arg(long, value_name = "SHA")]
        expect_commit: Option<String>,
        /// Stream one JSON event per line on stdout (human output stays on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Put the previous release (or an older one) back live.
    Rollback {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        rollout: RolloutArgs,
        /// Print the nodes the selection resolves to (name, address, labels) and exit,
        /// without connecting to any.
        #[arg(long)]
        list_nodes: bool,
        /// A release from the node's history (see `status`); default: the previous one.
        #[arg(long)]
        to: Option<String>,
        /// Go on without asking when the database is newer than the release expects, or
        /// when --migrate-down will revert it.
        #[arg(long)]
        yes: bool,
        /// Revert the migrations newer than the release expects, with the down files of
        /// the live release's commit: snapshot, switch, then the down files.
        #[arg(long)]
        migrate_down: bool,
        /// Stream one JSON event per line on stdout (human output stays on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Show what runs on each node.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the nodes the selection resolves to (name, address, labels) and exit,
        /// without connecting to any.
        #[arg(long)]
        list_nodes: bool,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate configuration and reach every node without changing anything.
    Check {
        #[command(flatten)]
        target: Target,
        /// Print the nodes the selection resolves to (name, address, labels) and exit,
        /// without connecting to any.
        #[arg(long)]
        list_nodes: bool,
    },
    /// Inspect the environment's lock, or clear one its holder left behind.
    Lock {
        #[command(subcommand)]
        command: LockCommand,
    },
    /// Inspect the database schema's migrations.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// The database snapshots on each node.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Show the host keys the nodes offer; with --fingerprint, add the key that matches
    /// it to known_hosts (hashed), replacing an older key of that node.
    Trust {
        #[command(flatten)]
        target: Target,
        /// The SHA256 fingerprint you checked out of band, e.g. `SHA256:...`.
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Inspect the environment's secrets (names only, never values).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Record a dirty schema version as clean: --to the dirty version if its file did
    /// apply, or the version before it if it did not. Runs no migration.
    Recover {
        #[command(flatten)]
        target: Target,
        /// The version to record as clean.
        #[arg(long)]
        to: u64,
        /// The commit whose migrations/ directory gives the version before the dirty one.
        #[arg(long = "ref", default_value = "HEAD")]
        git_ref: String,
        /// Go on without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Revert the schema to version --to with the down files of --ref, after a verified
    /// snapshot, under the environment's lock.
    Down {
        #[command(flatten)]
        target: Target,
        /// The version to go back to (0: revert every file).
        #[arg(long)]
        to: u64,
        /// The commit whose migrations/ directory gives the down files.
        #[arg(long = "ref", default_value = "HEAD")]
        git_ref: String,
        /// Go on without asking (CI); without a terminal and without --yes it refuses.
        #[arg(long)]
        yes: bool,
    },
    /// Each node's schema version, dirty flag, and applied and pending migration files.
    Status {
        #[command(flatten)]
        target: Target,
        /// The commit whose migrations/ directory is compared with the databases.
        #[arg(long = "ref", default_value = "HEAD")]
        git_ref: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Every node's snapshots, oldest first, with the release and schema version of each.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Take a snapshot of the database now, on each node (retention is applied first).
    Create {
        #[command(flatten)]
        target: Target,
    },
    /// Restore a snapshot into the live database, after taking one of the current state.
    Restore {
        #[command(flatten)]
        target: Target,
        /// The snapshot's file name, as `snapshot list` shows it.
        name: String,
        /// Go on without asking (CI); without a terminal and without --yes it refuses.
        #[arg(long)]
        yes: bool,
    },
    /// Copy a snapshot to this machine and check its size and SHA-256.
    Download {
        #[command(flatten)]
        target: Target,
        /// The snapshot's file name, as `snapshot list` shows it.
        name: String,
        /// A file or a directory to write it to (default: the current directory).
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// List the secrets the templates need, and which are missing or unused.
    Check {
        /// Environment name: inventory/<env>.yml.
        env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Show every node's lock holder.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Clear the holder record a finished or killed operation left behind. Shows the
    /// holder first; refuses (exit 3) while a live session still holds the lock.
    Release {
        #[command(flatten)]
        target: Target,
        /// The deploy id the holder record must show (see `lock status`).
        #[arg(long, value_name = "ID")]
        deploy_id: String,
        /// Go on without asking; without a terminal and without --yes it refuses.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// Environment name: inventory/<env>.yml.
    pub env: String,
    /// Only these nodes: names, globs (`web-*`) and labels (`@toronto`), comma-separated;
    /// the selection is their union.
    #[arg(long, value_delimiter = ',')]
    pub limit: Vec<String>,
}

/// How many nodes change at once, and when a rollout stops starting new ones.
#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    /// At most this many nodes deploy at the same time.
    #[arg(long, value_name = "N", default_value_t = 10, conflicts_with = "serial",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// One node at a time (the same as --parallel 1).
    #[arg(long)]
    pub serial: bool,
    /// Deploy this many nodes first, in inventory order; the others start only if every
    /// one of them succeeded.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: usize,
    /// Start no further node once more than N nodes have failed.
    #[arg(long, value_name = "N")]
    pub max_fail: Option<usize>,
}

impl RolloutArgs {
    pub fn rollout(&self) -> crate::deploy::Rollout {
        crate::deploy::Rollout {
            parallel: if self.serial { 1 } else { self.parallel.into() },
            canary: self.canary,
            max_fail: self.max_fail,
        }
    }
}
