//! The environment's secrets file (`inventory/<env>.env`, `.env` format, git-ignored).
//!
//! Values are registered for redaction the moment they are read, and never appear in
//! `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::Error;
use crate::redact;

/// Secrets every deploy needs.
pub const REQUIRED: &[&str] = &["DB_PASSWORD"];

#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// Reads and checks the file: it must exist, be private to its owner, parse, and hold
    /// every required secret.
    pub fn load(root: &Path, file: &str) -> Result<Self, Error> {
        let path = root.join(file);
        check_permissions(root, &path, file)?;

        let mut values = BTreeMap::new();
        let entries = dotenvy::from_path_iter(&path).map_err(|e| {
            Error::config(
                file,
                format!("cannot read: {}", describe(&e, &path)),
                "fix the file",
            )
        })?;
        for entry in entries {
            let (name, value) = entry.map_err(|e| {
                Error::config(
                    file,
                    describe(&e, &path),
                    "write each secret as NAME=value; quote values with spaces in single quotes",
                )
            })?;
            redact::register(&value);
            values.insert(name, value);
        }

        for name in REQUIRED {
            if !values.contains_key(*name) {
                return Err(Error::config(
                    file,
                    format!("secret `{name}` is missing"),
                    format!("add a line `{name}=...` (see {})", example(root, file)),
                ));
            }
        }
        Ok(Secrets { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Secret names as files on the node: `DB_PASSWORD` becomes `db_password`.
    pub fn file_names(&self) -> Vec<String> {
        self.values.keys().map(|k| file_name(k)).collect()
    }

    /// `(file name, value)` pairs for writing onto a node.
    pub fn files(&self) -> impl Iterator<Item = (String, &str)> {
        self.values.iter().map(|(k, v)| (file_name(k), v.as_str()))
    }
}

pub fn file_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The example to copy: the environment's own, or staging's.
fn example(root: &Path, file: &str) -> String {
    let own = format!("{file}.example");
    if root.join(&own).exists() {
        own
    } else {
        "inventory/staging.env.example".into()
    }
}

fn check_permissions(root: &Path, path: &Path, file: &str) -> Result<(), Error> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::config(
            file,
            format!("cannot read the secrets file: {e}"),
            format!(
                "copy {} to {file}, fill in the values, then `chmod 600 {file}`",
                example(root, file)
            ),
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::config(
            file,
            format!("the secrets file is readable by group or others (mode {mode:o})"),
            format!("run `chmod 600 {file}`"),
        ));
    }
    Ok(())
}

/// dotenvy's messages quote the line, which may hold a secret: give its number instead.
fn describe(err: &dotenvy::Error, path: &Path) -> String {
    match err {
        dotenvy::Error::LineParse(line, index) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let first = line.lines().next().unwrap_or_default();
            match text
                .lines()
                .position(|l| !first.is_empty() && l.contains(first))
            {
                Some(n) => format!("cannot parse line {} (at character {index})", n + 1),
                None => format!("cannot parse a line (at character {index})"),
            }
        }
        dotenvy::Error::Io(e) => e.to_string(),
        _ => "cannot parse the file".into(),
    }
}
