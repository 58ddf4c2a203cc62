//! Where secret values come from, and the set an environment deploys with.
//!
//! Deploy code sees only [`Secrets`]. Values come through a [`SecretStore`]: today the
//! environment's secrets file (`inventory/<env>.env`, `.env` format, git-ignored); a cloud
//! secret manager would be another store. Values are registered for redaction the moment
//! they are read, and never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::Error;
use crate::redact;

/// Secrets every deploy needs.
pub const REQUIRED: &[&str] = &["DB_PASSWORD"];

/// A source of secret values.
pub trait SecretStore {
    /// Where the values come from, for messages (a file path, a vault address).
    fn source(&self) -> &str;

    /// One secret's value, or `None` when the store does not hold it.
    fn get(&self, name: &str) -> Result<Option<String>, Error>;

    /// The names of the secrets whose name starts with `prefix` (all for `""`).
    fn list(&self, prefix: &str) -> Result<Vec<String>, Error>;
}

/// The environment's `.env`-format secrets file, read once.
pub struct FileStore {
    file: String,
    values: BTreeMap<String, String>,
}

impl FileStore {
    /// Reads the file: it must exist, be private to its owner, and parse.
    pub fn open(root: &Path, file: &str) -> Result<Self, Error> {
        let path = root.join(file);
        check_permissions(root, &path, file)?;

        refuse_expansions(&path, file)?;
        let entries = dotenvy::from_path_iter(&path).map_err(|e| {
            Error::config(
                file,
                format!("cannot read: {}", describe(&e, &path)),
                "fix the file",
            )
        })?;
        let mut values = BTreeMap::new();
        for entry in entries {
            let (name, value) = entry.map_err(|e| {
                Error::config(
                    file,
                    describe(&e, &path),
                    "write each secret as NAME='value' (in double quotes, write \\$ and \\\" for $ and \")",
                )
            })?;
            redact::register(&value);
            values.insert(name, value);
        }
        Ok(FileStore {
            file: file.to_string(),
            values,
        })
    }
}

impl SecretStore for FileStore {
    fn source(&self) -> &str {
        &self.file
    }

    fn get(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.values.get(name).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}

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
    /// Reads the environment's secrets file and checks that it holds every required secret.
    pub fn load(root: &Path, file: &str) -> Result<Self, Error> {
        let store = FileStore::open(root, file)?;
        let secrets = Secrets::from_store(&store)?;
        for name in REQUIRED {
            if secrets.get(name).is_none() {
                return Err(Error::config(
                    file,
                    format!("secret `{name}` is missing"),
                    format!("add a line `{name}=...` (see {})", example(root, file)),
                ));
            }
        }
        Ok(secrets)
    }

    /// Every secret `store` holds, registered for redaction.
    pub fn from_store(store: &dyn SecretStore) -> Result<Self, Error> {
        let mut values = BTreeMap::new();
        for name in store.list("")? {
            if let Some(value) = store.get(&name)? {
                redact::register(&value);
                values.insert(name, value);
            }
        }
        Ok(Secrets { values })
    }

    /// A set built from literal pairs (tests and tools).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let values = pairs
            .into_iter()
            .map(|(k, v)| {
                redact::register(v);
                (k.to_string(), v.to_string())
            })
            .collect();
        Secrets { values }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Secret names mapped to their file names on the node and in containers
    /// (`DB_PASSWORD` is `db_password`): what templates see as `secrets`.
    pub fn file_map(&self) -> BTreeMap<String, String> {
        self.values
            .keys()
            .map(|k| (k.clone(), file_name(k)))
            .collect()
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

/// A `$` outside single quotes is expanded by the `.env` format (`$HOME`, `${X}`), so a
/// secret holding one would silently arrive changed: refuse it, naming the line, unless
/// it is escaped as `\$`.
fn refuse_expansions(path: &Path, file: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for (n, line) in text.lines().enumerate() {
        if let Some(name) = expanding_assignment(line) {
            return Err(Error::config(
                file,
                format!(
                    "line {}: the value of `{name}` holds a `$` that would be expanded",
                    n + 1
                ),
                "wrap the value in single quotes, or write the `$` as `\\$`",
            ));
        }
    }
    Ok(())
}

/// The name assigned on `line` when its value holds an unescaped `$` outside single quotes.
fn expanding_assignment(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
    let (name, value) = line.split_once('=')?;
    let name = name.trim();
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    let value = value.trim_start();
    if !is_name || name.starts_with('#') || value.starts_with('\'') {
        return None;
    }

    let quoted = value.starts_with('"');
    let (mut escaped, mut after_space) = (false, false);
    for c in value.chars() {
        match c {
            '\\' if !escaped => escaped = true,
            '$' if !escaped => return Some(name),
            '#' if !quoted && after_space => return None,
            _ => escaped = false,
        }
        after_space = c.is_whitespace();
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL: &str = "SNTL-7q$P&x 'y\"z;#*";

    fn store_of(text: &str) -> Result<FileStore, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.env");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        FileStore::open(dir.path(), "test.env")
    }

    #[test]
    fn values_with_dollar_quotes_hash_and_spaces_survive_byte_for_byte() {
        let store = store_of(concat!(
            "# a comment\n",
            "DB_PASSWORD=\"SNTL-7q\\$P&x 'y\\\"z;#*\"\n",
            "SINGLE='SNTL-7q$P&x \"y;#* $HOME'\n",
        ))
        .unwrap();
        let secrets = Secrets::from_store(&store).unwrap();

        assert_eq!(secrets.get("DB_PASSWORD"), Some(SENTINEL));
        assert_eq!(secrets.get("SINGLE"), Some("SNTL-7q$P&x \"y;#* $HOME"));
        assert_eq!(store.list("DB_").unwrap(), vec!["DB_PASSWORD"]);
        assert_eq!(
            redact::redact(&format!("pw={SENTINEL}")),
            "pw=***",
            "values are registered for masking as they are read"
        );
    }

    #[test]
    fn a_dollar_that_would_be_expanded_is_refused_by_line() {
        for text in [
            "DB_PASSWORD=ok\nAPI_KEY=SNTL-a$b\n",
            "DB_PASSWORD=ok\nAPI_KEY=\"SNTL-${HOME}\"\n",
            "DB_PASSWORD=ok\nAPI_KEY=SNTL-a#b$c\n",
        ] {
            let err = store_of(text).err().expect("the file is refused");
            let text = format!("{err} {}", err.hints().join(" "));
            assert!(
                text.contains("line 2") && text.contains("API_KEY"),
                "{text}"
            );
            assert!(!text.contains("SNTL-"), "{text}");
        }
        for fine in [
            "API_KEY='a$b'\n",
            "API_KEY=\"a\\$b\"\n",
            "API_KEY=plain # a comment with $HOME\n",
        ] {
            assert!(store_of(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn a_bad_line_is_named_by_number_without_its_value() {
        let err = store_of("DB_PASSWORD=fine\nSNTL-broken 'value\n")
            .err()
            .expect("the file is refused");
        let text = format!("{err} {}", err.hints().join(" "));
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("SNTL-broken"), "{text}");
    }
}
