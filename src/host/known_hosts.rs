//! Host key verification against an OpenSSH known_hosts file, hashed entries included.
//!
//! We parse the file ourselves (instead of a yes/no helper) so that a refusal can name the
//! file, the line and both fingerprints.

use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, Mac};
use russh::keys::ssh_key::{HashAlg, PublicKey};
use sha1::Sha1;

/// What the known_hosts file says about a key offered by a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host lists exactly this key.
    Trusted,
    /// The host is listed with a key of the same type that differs.
    Changed {
        file: PathBuf,
        line: usize,
        known: String,
    },
    /// No line lists this host with a key of this type.
    Unknown { file: PathBuf },
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

/// Checks `offered` for `host:port` against the file at `path`.
pub fn verify(path: &Path, host: &str, port: u16, offered: &PublicKey) -> Verdict {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let pattern = host_pattern(host, port);
    let mut changed = None;

    for (index, line) in text.lines().enumerate() {
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
        Some((line, known)) => Verdict::Changed {
            file: path.to_path_buf(),
            line,
            known,
        },
        None => Verdict::Unknown {
            file: path.to_path_buf(),
        },
    }
}

/// Appends a hashed entry for `host:port`, the way `ssh-keygen -H` writes them.
pub fn append_hashed(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    use std::io::Write;

    let salt: [u8; 20] = rand_bytes();
    let mut mac = Hmac::<Sha1>::new_from_slice(&salt).expect("any key length works for HMAC");
    mac.update(host_pattern(host, port).as_bytes());
    let hash = mac.finalize().into_bytes();

    let b64 = base64::engine::general_purpose::STANDARD;
    let line = format!(
        "|1|{}|{} {}\n",
        b64.encode(salt),
        b64.encode(hash),
        key.to_openssh().map_err(std::io::Error::other)?
    );

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(line.as_bytes())
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

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    #[test]
    fn hashed_entry_trusts_its_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        append_hashed(&file, "10.1.2.3", 2222, &key(KEY_A)).unwrap();

        assert_eq!(
            verify(&file, "10.1.2.3", 2222, &key(KEY_A)),
            Verdict::Trusted
        );
        assert!(matches!(
            verify(&file, "10.1.2.3", 22, &key(KEY_A)),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn changed_key_names_line_and_old_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("# comment\nnode-a {KEY_A}\n")).unwrap();

        let verdict = verify(&file, "node-a", 22, &key(KEY_B));
        assert_eq!(
            verdict,
            Verdict::Changed {
                file: file.clone(),
                line: 2,
                known: fingerprint(&key(KEY_A)),
            }
        );
    }
}
