use std::sync::Arc;

use clap::Parser;
use slipway::cli::{Cli, Command, LockCommand, MigrateCommand, SecretsCommand, SnapshotCommand};
use slipway::config::Environment;
use slipway::error::{exit, exit_code, Error};
use slipway::redact::redact;
use slipway::report::Reporter;
use slipway::{deploy, fleet, snapshot_cmd, status, trust};

fn main() {
    slipway::redact::mask_panics();
    let cli = Cli::parse();
    init_logging(cli.verbose);

    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => report(&err),
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let root = cli.root;
    match cli.command {
        Command::Deploy {
            target,
            list_nodes: true,
            ..
        }
        | Command::Rollback {
            target,
            list_nodes: true,
            ..
        }
        | Command::Status {
            target,
            list_nodes: true,
            ..
        }
        | Command::Check {
            target,
            list_nodes: true,
        } => {
            fleet::list(&root, &target.env, &target.limit)?;
            Ok(exit::OK)
        }
        Command::Deploy {
            target,
            rollout,
            git_ref,
            allow_dirty,
            expect_commit,
            json,
            ..
        } => {
            let opts = deploy::Options {
                git_ref,
                limit: target.limit,
                allow_dirty,
                expect_commit,
                rollout: rollout.rollout(),
            };
            let reporter = Arc::new(Reporter::new().with_json(json));
            let result = deploy::run(&root, &target.env, &opts, reporter.clone()).await;
            reporter.end_run(result)?;
            Ok(exit::OK)
        }
        Command::Rollback {
            target,
            rollout,
            to,
            yes,
            migrate_down,
            json,
            ..
        } => {
            let opts = deploy::RollbackOptions {
                limit: target.limit,
                to,
                yes,
                migrate_down,
                rollout: rollout.rollout(),
            };
            let reporter = Arc::new(Reporter::new().with_json(json));
            let result = deploy::rollback(&root, &target.env, &opts, reporter.clone()).await;
            reporter.end_run(result)?;
            Ok(exit::OK)
        }
        Command::Status { target, json, .. } => {
            let env = Arc::new(Environment::load_without_secrets(&root, &target.env)?);
            let rows = status::status(env, &target.limit).await?;
            if json {
                println!("{}", redact(&serde_json::to_string_pretty(&rows)?));
            } else {
                status::print_table(&rows);
            }
            Ok(exit::OK)
        }
        Command::Check { target, .. } => {
            let env = Arc::new(Environment::load(&root, &target.env)?);
            let failed = status::check(env, &target.limit).await?;
            Ok(if failed == 0 { exit::OK } else { exit::FAILED })
        }
        Command::Lock {
            command: LockCommand::Status { target },
        } => {
            let env = Arc::new(Environment::load_without_secrets(&root, &target.env)?);
            status::lock_status(env, &target.limit).await?;
            Ok(exit::OK)
        }
        Command::Lock {
            command:
                LockCommand::Release {
                    target,
                    deploy_id,
                    yes,
                },
        } => {
            let env = Arc::new(Environment::load_without_secrets(&root, &target.env)?);
            status::lock_release(env, &target.limit, &deploy_id, yes).await?;
            Ok(exit::OK)
        }
        Command::Migrate {
            command: MigrateCommand::Status { target, git_ref },
        } => {
            let env = Arc::new(Environment::load_without_secrets(&root, &target.env)?);
            let clean = status::migrate_status(env, &target.limit, &git_ref).await?;
            Ok(if clean { exit::OK } else { exit::FAILED })
        }
        Command::Migrate {
            command:
                MigrateCommand::Recover {
                    target,
                    to,
                    git_ref,
                    yes,
                },
        } => {
            let opts = deploy::RecoverOptions {
                limit: target.limit,
                to,
                git_ref,
                yes,
            };
            deploy::recover(&root, &target.env, &opts, Arc::new(Reporter::new())).await?;
            Ok(exit::OK)
        }
        Command::Migrate {
            command:
                MigrateCommand::Down {
                    target,
                    to,
                    git_ref,
                    yes,
                },
        } => {
            let opts = deploy::DownOptions {
                limit: target.limit,
                to,
                git_ref,
                yes,
            };
            deploy::migrate_down(&root, &target.env, &opts, Arc::new(Reporter::new())).await?;
            Ok(exit::OK)
        }
        Command::Snapshot {
            command: SnapshotCommand::List { target },
        } => {
            let env = Arc::new(Environment::load_without_secrets(&root, &target.env)?);
            let answered = status::snapshot_list(env, &target.limit).await?;
            Ok(if answered { exit::OK } else { exit::FAILED })
        }
        Command::Trust {
            target,
            fingerprint,
        } => {
            let env = Arc::new(Environment::load_without_secrets(&root, &target.env)?);
            let refused = trust::run(env, &target.limit, fingerprint.as_deref()).await?;
            Ok(if refused == 0 { exit::OK } else { exit::FAILED })
        }
        Command::Snapshot {
            command: SnapshotCommand::Create { target },
        } => {
            let reporter = Arc::new(Reporter::new());
            snapshot_cmd::create(&root, &target.env, &target.limit, reporter).await?;
            Ok(exit::OK)
        }
        Command::Snapshot {
            command: SnapshotCommand::Restore { target, name, yes },
        } => {
            let opts = snapshot_cmd::RestoreOptions {
                limit: target.limit,
                name,
                yes,
            };
            snapshot_cmd::restore(&root, &target.env, &opts, Arc::new(Reporter::new())).await?;
            Ok(exit::OK)
        }
        Command::Snapshot {
            command: SnapshotCommand::Download { target, name, to },
        } => {
            let opts = snapshot_cmd::DownloadOptions {
                limit: target.limit,
                name,
                to,
            };
            snapshot_cmd::download(&root, &target.env, &opts).await?;
            Ok(exit::OK)
        }
        Command::Secrets {
            command: SecretsCommand::Check { env },
        } => {
            slipway::secret_check::run(&root, &env)?;
            Ok(exit::OK)
        }
    }
}

/// Prints an error: one clear line (plus hints) for expected ones, the chain for the rest.
fn report(err: &anyhow::Error) -> i32 {
    if let Some(signal) = err.downcast_ref::<deploy::Interrupted>() {
        eprintln!("error: {signal}");
        return signal.exit_code();
    }
    match err.chain().find_map(|c| c.downcast_ref::<Error>()) {
        Some(ours) => {
            eprintln!("{}", redact(&format!("error: {ours}")));
            for hint in ours.hints() {
                eprintln!("  {}", redact(&hint));
            }
        }
        None => {
            eprintln!("{}", redact(&format!("error: {err}")));
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {}", redact(&cause.to_string()));
            }
        }
    }
    exit_code(err)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("slipway={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr::default)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// stderr, with every secret masked before it is written.
#[derive(Default)]
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
