//! SIGINT and SIGTERM during a rollout: every running node stops its current step and
//! undoes its change (the new color removed, or traffic switched back), its lock is
//! released, no further node starts, and slipway exits 130 or 143.
//!
//! Until [`listen`] is called the signals keep their default action: before the rollout
//! nothing has changed on any node, and the kernel frees the locks of a process that dies.

use std::sync::OnceLock;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The rollout was stopped by a signal; `main` exits with [`Interrupted::exit_code`].
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped by {name}: the nodes that were deploying undid their change and released their lock"
)]
pub struct Interrupted {
    pub name: &'static str,
    pub number: i32,
}

impl Interrupted {
    /// 128 plus the signal's number, as a shell reports a process the signal ended.
    pub fn exit_code(&self) -> i32 {
        128 + self.number
    }
}

/// The signal number, once one arrived.
fn channel() -> &'static watch::Sender<Option<i32>> {
    static CHANNEL: OnceLock<watch::Sender<Option<i32>>> = OnceLock::new();
    CHANNEL.get_or_init(|| watch::channel(None).0)
}

/// Catches SIGINT and SIGTERM from now on (call it once the rollout is about to start).
pub fn listen() -> anyhow::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let number = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
        };
        channel().send_replace(Some(number));
        // Later signals are caught and dropped: the undo in progress must finish.
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    });
    Ok(())
}

/// The signal that stopped the rollout, if one did.
pub fn received() -> Option<Interrupted> {
    (*channel().borrow()).map(describe)
}

/// Waits until a signal arrives (forever when none does).
pub async fn requested() -> Interrupted {
    let mut rx = channel().subscribe();
    loop {
        if let Some(number) = *rx.borrow_and_update() {
            return describe(number);
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn describe(number: i32) -> Interrupted {
    let name = if number == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    Interrupted { name, number }
}
