//! Nodes reached over SSH (russh): one connection per node, reused by every step, and
//! opened again (within a bounded time) when a step that outlives its session asks for it
//! after the connection was lost (see `crate::detached`).
//!
//! The host key is checked against known_hosts before authentication; an unknown or changed
//! key ends the connection before any command runs. Agent forwarding is never requested.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use russh::client::{self, Handle};
use russh::keys::{
    decode_secret_key, load_secret_key, PrivateKey, PrivateKeyWithHashAlg, PublicKey,
    PublicKeyOrCertificate,
};
use russh::{ChannelMsg, Preferred};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::credentials::KeySource;
use super::known_hosts::{self, KnownHosts, Verdict};
use super::{Held, Host, Input, Output};

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key: KeySource,
    pub known_hosts: KnownHosts,
    /// The jump host this node is reached through (ProxyJump), itself perhaps behind one.
    pub jump: Option<Box<SshTarget>>,
    /// Time between keepalives; four unanswered ones end the connection.
    pub keepalive: Duration,
    /// The longest the TCP connect, the SSH handshake and authentication may take
    /// together (`ssh_connect_timeout_seconds`); a jump host gets its own.
    pub connect_timeout: Duration,
}

pub struct SshHost {
    target: SshTarget,
    /// The open connection; replaced by [`Host::reconnect`] after one is lost.
    link: RwLock<Arc<Link>>,
    /// How many times the connection was opened again.
    generation: AtomicU64,
    /// One reconnect at a time.
    reconnecting: tokio::sync::Mutex<()>,
    sent: Arc<AtomicU64>,
}

/// One open connection: the session, and the jump host's connection that carries it.
struct Link {
    handle: Handle<Verifier>,
    _via: Option<Box<SshHost>>,
}

impl SshHost {
    /// Connects, verifies the host key and authenticates.
    pub async fn connect(target: SshTarget) -> anyhow::Result<Self> {
        let link = open(&target).await?;
        Ok(SshHost {
            target,
            link: RwLock::new(Arc::new(link)),
            generation: AtomicU64::new(0),
            reconnecting: tokio::sync::Mutex::new(()),
            sent: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The connection in use now.
    fn link(&self) -> Arc<Link> {
        match self.link.read() {
            Ok(link) => link.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Opens connections until one succeeds or the reconnect window has passed.
    async fn open_again(&self) -> anyhow::Result<Link> {
        let window = reconnect_window(&self.target);
        let deadline = Instant::now() + window;
        let mut pause = Duration::from_secs(1);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match open(&self.target).await {
                Ok(link) => return Ok(link),
                Err(e) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{}: no new SSH connection within {}s ({attempts} attempts); the last \
                     one said: {error:#}",
                    self.describe(),
                    window.as_secs()
                );
            }
            tracing::info!(host = %self.describe(), attempts, "reconnect failed: {error:#}");
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn exec(
        &self,
        command: &str,
    ) -> anyhow::Result<(russh::Channel<client::Msg>, Arc<Link>)> {
        let link = self.link();
        if link.handle.is_closed() {
            bail!(
                "{}: the SSH connection was lost (closed by the network or the node); \
                 nothing more could be run there",
                self.describe()
            );
        }
        let channel = link
            .handle
            .channel_open_session()
            .await
            .with_context(|| format!("{}: cannot open an SSH channel", self.describe()))?;
        channel.exec(true, command).await?;
        Ok((channel, link))
    }
}

/// How long [`Host::reconnect`] keeps trying: six connect timeouts (a minute with the
/// default of 10 s). An attempt begun inside the window gets its whole connect timeout.
fn reconnect_window(target: &SshTarget) -> Duration {
    target.connect_timeout * 6
}

/// Connects (through the jump host, if any), verifies the host key and authenticates.
async fn open(target: &SshTarget) -> anyhow::Result<Link> {
    let via = match &target.jump {
        Some(jump) => Some(Box::new(
            Box::pin(SshHost::connect((**jump).clone()))
                .await
                .with_context(|| format!("jump host {}", jump.address))?,
        )),
        None => None,
    };
    let deadline = Instant::now() + target.connect_timeout;
    let (connected, verdict) = handshake(target, via.as_deref(), deadline).await?;
    let mut handle = match connected {
        Err(e) => return Err(refusal(target, &verdict).unwrap_or_else(|| anyhow!(e))),
        Ok(handle) => handle,
    };

    within(
        target,
        deadline,
        "authentication",
        authenticate(&mut handle, target),
    )
    .await??;
    tracing::info!(address = %target.address, port = target.port, "ssh connection opened");
    Ok(Link { handle, _via: via })
}

type Seen = Arc<Mutex<Option<(Verdict, PublicKey)>>>;

/// Opens the connection up to host key verification, by `deadline`; the key the host
/// offered, and what known_hosts says of it, land in the returned slot.
async fn handshake(
    target: &SshTarget,
    via: Option<&SshHost>,
    deadline: Instant,
) -> anyhow::Result<(Result<Handle<Verifier>, russh::Error>, Seen)> {
    let seen: Seen = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        target: target.clone(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        keepalive_interval: Some(target.keepalive),
        keepalive_max: 4,
        inactivity_timeout: None,
        nodelay: true,
        preferred: Preferred {
            key: known_hosts::preferred_algorithms(
                &target.known_hosts,
                &target.address,
                target.port,
            )
            .into(),
            ..Preferred::default()
        },
        ..Default::default()
    });
    let handshake = "the SSH handshake";
    let connected = match via {
        Some(jump) => {
            let link = jump.link();
            let tunnel = link.handle.channel_open_direct_tcpip(
                &target.address,
                target.port.into(),
                "127.0.0.1",
                0,
            );
            let tunnel = within(target, deadline, "the tunnel through the jump host", tunnel)
                .await??
                .into_stream();
            let connecting = client::connect_stream(config, tunnel, verifier);
            within(target, deadline, handshake, connecting).await?
        }
        None => {
            let socket = tcp_connect(target, deadline).await?;
            let connecting = client::connect_stream(config, socket, verifier);
            within(target, deadline, handshake, connecting).await?
        }
    };
    Ok((connected, seen))
}

/// The TCP connection to the node itself, by `deadline`.
async fn tcp_connect(target: &SshTarget, deadline: Instant) -> anyhow::Result<TcpStream> {
    let address = (target.address.as_str(), target.port);
    let socket = within(
        target,
        deadline,
        "the TCP connect",
        TcpStream::connect(address),
    )
    .await?
    .map_err(|e| {
        anyhow!(
            "{}:{}: the TCP connect failed: {e}; check the address, the port and that sshd \
                 runs there",
            target.address,
            target.port
        )
    })?;
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// Runs one phase of the connect (`what`), failing once `deadline` has passed with a
/// message that names the node, the timeout and the key that sets it.
async fn within<T>(
    target: &SshTarget,
    deadline: Instant,
    what: &str,
    phase: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    match tokio::time::timeout_at(deadline.into(), phase).await {
        Ok(done) => Ok(done),
        Err(_) => Err(anyhow!(
            "{}:{}: no SSH answer within {}s ({what} did not finish); the node may be down or \
             a firewall drops its packets. If it is only slow, raise \
             `ssh_connect_timeout_seconds` in the inventory",
            target.address,
            target.port,
            target.connect_timeout.as_secs()
        )),
    }
}

/// The host key `target` offers and what known_hosts says of it, without authenticating.
pub async fn offered_key(target: &SshTarget) -> anyhow::Result<(PublicKey, Verdict)> {
    let via = match &target.jump {
        Some(jump) => Some(SshHost::connect((**jump).clone()).await?),
        None => None,
    };
    let deadline = Instant::now() + target.connect_timeout;
    let (connected, seen) = handshake(target, via.as_ref(), deadline).await?;
    let recorded = seen.lock().ok().and_then(|slot| slot.clone());
    match (recorded, connected) {
        (Some((verdict, key)), _) => Ok((key, verdict)),
        (None, Err(e)) => Err(anyhow!(
            "{}:{}: the SSH handshake failed before a host key was offered: {e}",
            target.address,
            target.port
        )),
        (None, Ok(_)) => bail!("{}:{} offered no host key", target.address, target.port),
    }
}

/// Turns a host key refusal recorded during the handshake into a message that says how to
/// fix it.
fn refusal(
    target: &SshTarget,
    seen: &Mutex<Option<(Verdict, PublicKey)>>,
) -> Option<anyhow::Error> {
    let (verdict, key) = seen.lock().ok()?.clone()?;
    let offered = known_hosts::fingerprint(&key);
    let host = known_hosts::host_pattern(&target.address, target.port);
    match verdict {
        Verdict::Trusted => None,
        Verdict::Unknown { file } => Some(anyhow!(
            "host key of {host} is not known (offered {offered}); nothing was run there. \
             Check the fingerprint out of band, then trust it: \
             `slipway trust <env> --limit <node> --fingerprint {offered}` adds it to {file}",
        )),
        Verdict::Changed { file, line, known } => Some(anyhow!(
            "HOST KEY CHANGED for {host}: {file}:{line} has {known}, the host now offers {offered}; \
             nothing was run there. If the node was rebuilt, \
             once you have checked the new fingerprint out of band: \
             `slipway trust <env> --limit <node> --fingerprint {offered}` replaces it in {file}; \
             otherwise treat this as an attack",
        )),
    }
}

async fn authenticate(handle: &mut Handle<Verifier>, target: &SshTarget) -> anyhow::Result<()> {
    let who = format!("{}@{}:{}", target.user, target.address, target.port);
    let ok = match &target.key {
        KeySource::File(path) => {
            check_key_permissions(path)?;
            let key = load_secret_key(path, None)
                .with_context(|| format!("cannot load the private key {}", path.display()))?;
            authenticate_with_key(handle, target, key).await?
        }
        KeySource::Variable { name, text } => {
            let key = decode_secret_key(text, None).map_err(|_| {
                anyhow!("${name} does not hold an unencrypted OpenSSH or PEM private key")
            })?;
            authenticate_with_key(handle, target, key).await?
        }
        KeySource::Agent => authenticate_with_agent(handle, target).await?,
    };
    if !ok {
        bail!(
            "{who}: the server refused the key; check that its public half is in ~{}/.ssh/authorized_keys on the node",
            target.user
        );
    }
    Ok(())
}

async fn authenticate_with_key(
    handle: &mut Handle<Verifier>,
    target: &SshTarget,
    key: PrivateKey,
) -> anyhow::Result<bool> {
    let hash = handle.best_supported_rsa_hash().await?.flatten();
    let auth = handle
        .authenticate_publickey(
            &target.user,
            PrivateKeyWithHashAlg::new(Arc::new(key), hash),
        )
        .await?;
    Ok(auth.success())
}

async fn authenticate_with_agent(
    handle: &mut Handle<Verifier>,
    target: &SshTarget,
) -> anyhow::Result<bool> {
    let mut agent = russh::keys::agent::client::AgentClient::connect_env()
        .await
        .context(
            "no `key:` is set for this node, SLIPWAY_SSH_KEY is not set, and no ssh-agent is \
             reachable (SSH_AUTH_SOCK)",
        )?;
    let hash = handle.best_supported_rsa_hash().await?.flatten();
    for identity in agent.request_identities().await? {
        let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = identity else {
            continue;
        };
        let auth = handle
            .authenticate_publickey_with(&target.user, key, hash, &mut agent)
            .await
            .map_err(|e| anyhow!("ssh-agent: {e:?}"))?;
        if auth.success() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A private key readable by group or others is refused, as OpenSSH does.
fn check_key_permissions(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the private key {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "private key {} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[async_trait]
impl Host for SshHost {
    fn describe(&self) -> String {
        format!(
            "{}@{}:{}",
            self.target.user, self.target.address, self.target.port
        )
    }

    async fn run(&self, command: &str, input: Input) -> anyhow::Result<Output> {
        let (channel, link) = self.exec(command).await?;
        let (mut reader, writer) = channel.split();

        let sent = self.sent.clone();
        let feed = tokio::spawn(async move {
            let result = match input {
                Input::None => Ok(()),
                Input::Bytes(bytes) => {
                    sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    writer.data_bytes(bytes).await
                }
                Input::Stream(mut stream) => pump(&mut stream, &writer, &sent).await,
            };
            let _ = writer.eof().await;
            result
        });

        let mut out = Output::default();
        while let Some(msg) = reader.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.code = Some(exit_status as i32),
                _ => {}
            }
        }

        feed.abort();
        if out.code.is_none() && link.handle.is_closed() {
            bail!(
                "{}: the SSH connection was lost while a command ran",
                self.describe()
            );
        }
        Ok(out)
    }

    async fn run_to(
        &self,
        command: &str,
        sink: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> anyhow::Result<Output> {
        let (mut channel, link) = self.exec(command).await?;
        channel.eof().await?;

        let mut out = Output::default();
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => sink.write_all(&data).await?,
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.code = Some(exit_status as i32),
                _ => {}
            }
        }
        sink.flush().await?;
        if out.code.is_none() && link.handle.is_closed() {
            bail!(
                "{}: the SSH connection was lost while a command ran",
                self.describe()
            );
        }
        Ok(out)
    }

    async fn hold(&self, command: &str) -> anyhow::Result<Box<dyn Held>> {
        let (channel, link) = self.exec(command).await?;
        Ok(Box::new(SshHeld {
            channel,
            _link: link,
            pending: Vec::new(),
            exited: false,
            code: None,
        }))
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn connected(&self) -> bool {
        !self.link().handle.is_closed()
    }

    async fn reconnect(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.reconnecting.lock().await;
        if self.connected() {
            return Ok(());
        }
        let link = self.open_again().await?;
        match self.link.write() {
            Ok(mut slot) => *slot = Arc::new(link),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(link),
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        tracing::info!(host = %self.describe(), "reconnected");
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn reconnect_window(&self) -> Duration {
        reconnect_window(&self.target)
    }
}

/// Copies a stream into the channel in chunks, counting bytes.
async fn pump(
    stream: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    writer: &russh::ChannelWriteHalf<client::Msg>,
    sent: &AtomicU64,
) -> Result<(), russh::Error> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(russh::Error::IO)?;
        if n == 0 {
            return Ok(());
        }
        sent.fetch_add(n as u64, Ordering::Relaxed);
        writer.data_bytes(buf[..n].to_vec()).await?;
    }
}

struct SshHeld {
    channel: russh::Channel<client::Msg>,
    /// The connection the command runs on, kept open while it is held.
    _link: Arc<Link>,
    pending: Vec<u8>,
    exited: bool,
    code: Option<i32>,
}

#[async_trait]
impl Held for SshHeld {
    async fn read_line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_string()));
            }
            if self.exited {
                return Ok(None);
            }
            match self.channel.wait().await {
                Some(ChannelMsg::Data { data }) => self.pending.extend_from_slice(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    self.code = Some(exit_status as i32);
                    self.exited = true;
                }
                Some(ChannelMsg::Close) | None => self.exited = true,
                Some(_) => {}
            }
        }
    }

    async fn release(mut self: Box<Self>) -> anyhow::Result<Option<i32>> {
        if !self.exited {
            self.channel.eof().await?;
        }
        while let Some(msg) = self.channel.wait().await {
            if let ChannelMsg::ExitStatus { exit_status } = msg {
                self.code = Some(exit_status as i32);
            }
        }
        Ok(self.code)
    }
}

/// The russh handler: verifies the host key and records why it refused one.
struct Verifier {
    target: SshTarget,
    seen: Seen,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key: &PublicKey = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => return Ok(false),
        };
        let t = &self.target;
        let verdict = known_hosts::verify(&t.known_hosts, &t.address, t.port, key);
        let trusted = verdict == Verdict::Trusted;
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some((verdict, key.clone()));
        }
        Ok(trusted)
    }
}
