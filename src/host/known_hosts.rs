//! Host key verification against an OpenSSH known_hosts file, hashed entries included.
//!
//! We parse the file ourselves (instead of a yes/no helper) so that a refusal can name the
//! file, the line and both fingerprints.

use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, Mac};
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;

/// What the known_hosts file says about a key offered by a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host lists exactly this key.
    Trusted,
    /// The host is listed with a key of the same type that differs.
    Changed {
        file: String,
        line: usize,
        known: String,
    },
    /// No line lists this host with a key of this type.
    Unknown { file: String },
}

/// A known_hosts list: read from a file, or given whole in an environment variable (CI).
#[derive(Debug, Clone)]
pub struct KnownHosts {
    /// How messages name it: the file's path, or `$VARIABLE`.
    pub label: String,
    /// The file, when it is one (the only kind `slipway trust` can add to).
    pub path: Option<PathBuf>,
    pub text: String,
}

impl KnownHosts {
    /// The file at `path`; a missing file is an empty list.
    pub fn file(path: &Path) -> Self {
        KnownHosts {
            label: path.display().to_string(),
            path: Some(path.to_path_buf()),
            text: std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    pub fn inline(variable: &str, text: String) -> Self {
        KnownHosts {
            label: format!("${variable}"),
            path: None,
            text,
        }
    }
}

/// The OpenSSH spelling of a host in known_hosts: `host` on port 22, `[host]:port` elsewhere.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Checks `offered` for `host:port` against `known`.
pub fn verify(known: &KnownHosts, host: &str, port: u16, offered: &PublicKey) -> Verdict {
    let pattern = host_pattern(host, port);
    let mut changed = None;

    for (index, line) in known.text.lines().enumerate() {
        let Some(entry) = parse_line(line) else {
            continue;
        };
        if entry.revoked || !entry.hosts.split(',').any(|h| host_matches(h, &pattern)) {
            continue;
        }
        if entry.key.key_data() == offered.key_data() {
            return Verdict::Trusted;
        }
        if entry.key.algorithm() == offered.algorithm() && changed.is_none() {
            changed = Some((index + 1, fingerprint(&entry.key)));
        }
    }

    match changed {
        Some((line, fingerprint)) => Verdict::Changed {
            file: known.label.clone(),
            line,
            known: fingerprint,
        },
        None => Verdict::Unknown {
            file: known.label.clone(),
        },
    }
}

/// The host key algorithms to ask `host:port` for, most wanted first: russh's default
/// order, with the types `known` already holds for that host ahead of the others (as
/// OpenSSH orders them). A node known by its ecdsa or RSA key is then asked for that key,
/// not refused because it also has an ed25519 key that known_hosts lacks. Nothing is left
/// out, so an unknown host still offers a key to show in the refusal.
pub fn preferred_algorithms(known: &KnownHosts, host: &str, port: u16) -> Vec<Algorithm> {
    let held = held_algorithms(known, host, port);
    let is_held = |wanted: &Algorithm| {
        held.iter()
            .any(|a| a == wanted || (is_rsa(a) && is_rsa(wanted)))
    };
    let (first, rest): (Vec<Algorithm>, Vec<Algorithm>) = russh::Preferred::DEFAULT
        .key
        .iter()
        .cloned()
        .partition(is_held);
    first.into_iter().chain(rest).collect()
}

/// An RSA key answers every RSA signature algorithm (`rsa-sha2-512`, `rsa-sha2-256`,
/// `ssh-rsa`).
fn is_rsa(algorithm: &Algorithm) -> bool {
    matches!(algorithm, Algorithm::Rsa { .. })
}

/// The key types the lines for `host:port` hold (revoked keys left out).
fn held_algorithms(known: &KnownHosts, host: &str, port: u16) -> Vec<Algorithm> {
    let pattern = host_pattern(host, port);
    known
        .text
        .lines()
        .filter_map(parse_line)
        .filter(|e| !e.revoked && e.hosts.split(',').any(|h| host_matches(h, &pattern)))
        .map(|e| e.key.algorithm())
        .collect()
}

/// A hashed entry for `host:port`, the way `ssh-keygen -H` writes them.
pub fn hashed_line(host: &str, port: u16, key: &PublicKey) -> std::io::Result<String> {
    let salt: [u8; 20] = rand_bytes();
    let mut mac = Hmac::<Sha1>::new_from_slice(&salt).expect("any key length works for HMAC");
    mac.update(host_pattern(host, port).as_bytes());
    let hash = mac.finalize().into_bytes();

    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "|1|{}|{} {}",
        b64.encode(salt),
        b64.encode(hash),
        key.to_openssh().map_err(std::io::Error::other)?
    ))
}

/// Trusts `key` for `host:port` in the file at `path`: drops the lines that list another
/// key of the same type for that host (a rebuilt node), then appends a hashed entry.
/// The file is rewritten under a temporary name and renamed.
pub fn trust(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let pattern = host_pattern(host, port);
    let mut kept = Vec::new();
    let mut dropped = 0;
    for line in text.lines() {
        let stale = parse_line(line).is_some_and(|e| {
            !e.revoked
                && e.key.algorithm() == key.algorithm()
                && e.hosts.split(',').any(|h| host_matches(h, &pattern))
        });
        if stale {
            dropped += 1;
        } else {
            kept.push(line.to_string());
        }
    }
    kept.push(hashed_line(host, port, key)?);

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("slipway-tmp");
    std::fs::write(&tmp, kept.join("\n") + "\n")?;
    std::fs::rename(&tmp, path)?;
    Ok(dropped)
}

struct Entry<'a> {
    hosts: &'a str,
    key: PublicKey,
    revoked: bool,
}

fn parse_line(line: &str) -> Option<Entry<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }

    let mut fields = line.split_whitespace();
    let mut hosts = fields.next()?;
    let mut revoked = false;
    if hosts.starts_with('@') {
        revoked = hosts == "@revoked";
        if hosts == "@cert-authority" {
            return None;
        }
        hosts = fields.next()?;
    }
    let kind = fields.next()?;
    let data = fields.next()?;
    let key = PublicKey::from_openssh(&format!("{kind} {data}")).ok()?;
    Some(Entry {
        hosts,
        key,
        revoked,
    })
}

fn host_matches(entry: &str, pattern: &str) -> bool {
    let Some(hashed) = entry.strip_prefix("|1|") else {
        return entry == pattern;
    };
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };

    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(pattern.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;

    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHdC4dLrtHsjvZ9SHbpJSh8dmD/VmQY9DbkiO8kPYsbN";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    const KEY_ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLl+34Zl+J5pVDDWaxxT/mDk03r70JzQ4zZ2QWqwzFd5THgt9+0zlIyOfl9/NiuXTzH4GOluI+olZTAEzON68X0=";
    const KEY_RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC8KOeYIpLETsK0k6qv/saHkjPhKbTTH7IE6iOxuL+jto/Edo7C9girf93NktuSOm+5fCZVK2wGKPCYFpEJQGC2EHyLa6hhEjk5+6xjApuqyr19a0wpgQj87xg4J9l2BYgXt0nKjLj1cp8hwGaXdVeqv+vJHCGbLSSLNQ4ldViiPBpDJ8An80WLBjf6Aoye96Q6RfBC/Owb28c1nYMEdIrW1Es5N51JPqf1Ozx5wPIygUKvN/9t1asXHMaM56WdSIzP3FSwELrdA2HgPX1xmHf3LjASEQVcM5zNGh7IS0jo2HpQ5yKaHcT5CXJSHC7dl3v46f2Fg06Fh0Q+E7VRHgv1";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    #[test]
    fn hashed_entry_trusts_its_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        trust(&file, "10.1.2.3", 2222, &key(KEY_A)).unwrap();
        let known = KnownHosts::file(&file);

        assert!(known.text.starts_with("|1|"), "{}", known.text);
        assert_eq!(
            verify(&known, "10.1.2.3", 2222, &key(KEY_A)),
            Verdict::Trusted
        );
        assert!(matches!(
            verify(&known, "10.1.2.3", 22, &key(KEY_A)),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn changed_key_names_line_and_old_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("# comment\nnode-a {KEY_A}\n")).unwrap();

        let verdict = verify(&KnownHosts::file(&file), "node-a", 22, &key(KEY_B));
        assert_eq!(
            verdict,
            Verdict::Changed {
                file: file.display().to_string(),
                line: 2,
                known: fingerprint(&key(KEY_A)),
            }
        );
    }

    #[test]
    fn trusting_a_new_key_replaces_the_old_one_of_that_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("node-a {KEY_A}\nnode-b {KEY_A}\n")).unwrap();

        assert_eq!(trust(&file, "node-a", 22, &key(KEY_B)).unwrap(), 1);
        let known = KnownHosts::file(&file);
        assert_eq!(verify(&known, "node-a", 22, &key(KEY_B)), Verdict::Trusted);
        assert_eq!(verify(&known, "node-b", 22, &key(KEY_A)), Verdict::Trusted);
        assert!(matches!(
            verify(&known, "node-a", 22, &key(KEY_A)),
            Verdict::Changed { .. }
        ));
    }

    fn preferred(text: &str, host: &str) -> Vec<Algorithm> {
        preferred_algorithms(&KnownHosts::inline("KH", text.into()), host, 22)
    }

    #[test]
    fn a_host_known_by_its_ecdsa_key_is_asked_for_that_key_first() {
        let known = format!("node-a {KEY_ECDSA}\nnode-b {KEY_A}\n");
        let order = preferred(&known, "node-a");
        assert_eq!(order[0], key(KEY_ECDSA).algorithm());
        assert!(order.contains(&Algorithm::Ed25519), "nothing is left out");
        assert_eq!(order.len(), russh::Preferred::DEFAULT.key.len());
        assert_eq!(preferred(&known, "node-b")[0], Algorithm::Ed25519);
    }

    #[test]
    fn a_host_known_by_its_rsa_key_is_asked_for_every_rsa_signature_first() {
        let known = format!(
            "|1|x|y {KEY_A}\n{}\n",
            hashed_line("node-a", 22, &key(KEY_RSA)).unwrap()
        );
        let order = preferred(&known, "node-a");
        assert!(order[..3].iter().all(is_rsa), "{order:?}");
        assert_eq!(
            order[0],
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512)
            }
        );
        assert_eq!(order[3], Algorithm::Ed25519, "the rest keep russh's order");
    }

    #[test]
    fn several_known_types_keep_russh_order_among_themselves_and_revoked_keys_do_not_count() {
        let known = format!("node-a {KEY_RSA}\nnode-a {KEY_ECDSA}\n@revoked node-a {KEY_A}\n");
        let order = preferred(&known, "node-a");
        assert_eq!(order[0], key(KEY_ECDSA).algorithm());
        assert!(order[1..4].iter().all(is_rsa), "{order:?}");
        assert_eq!(
            preferred("", "node-a"),
            russh::Preferred::DEFAULT.key.to_vec(),
            "an unknown host gets russh's default order"
        );
    }
}
