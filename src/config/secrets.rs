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

/// How to write any value so that it arrives byte for byte.
const QUOTING: &str =
    "write the value in double quotes, with `\\` as `\\\\`, `\"` as `\\\"` and `$` as `\\$`";

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
    /// Reads the file: it must exist, be private to its owner, parse, and hold no `$` that
    /// the format would expand.
    pub fn open(root: &Path, file: &str) -> Result<Self, Error> {
        let path = root.join(file);
        check_permissions(root, &path, file)?;

        let text = read(&path, file)?;
        let entries =
            parse(&text).map_err(|e| Error::config(file, describe(&e, &text), QUOTING))?;
        entries
            .iter()
            .for_each(|(_, value)| redact::register(value));
        refuse_expansions(&text, &entries, file)?;

        Ok(FileStore {
            file: file.to_string(),
            values: entries.into_iter().collect(),
        })
    }

    /// Registers for masking every value the file holds, when it can be read at all: for
    /// commands that never need a secret but relay text that may hold one. Nothing else is
    /// checked, and a missing or broken file is no error here.
    pub fn mask_values(root: &Path, file: &str) {
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            return;
        };
        for (_, value) in dotenvy::from_read_iter(text.as_bytes()).map_while(Result::ok) {
            redact::register(&value);
        }
    }
}

fn read(path: &Path, file: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::config(
            file,
            format!("cannot read the secrets file: {e}"),
            "make it a UTF-8 text file of NAME=value lines",
        )
    })
}

/// Every `(name, value)` of a `.env` text, as dotenvy reads it.
fn parse(text: &str) -> Result<Vec<(String, String)>, dotenvy::Error> {
    dotenvy::from_read_iter(text.as_bytes()).collect()
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

/// dotenvy expands a `$` outside single quotes (`$HOME`, `${X}`) and has no switch to turn
/// that off, so a secret holding one would silently arrive changed: refuse it, naming the
/// line. To tell an expanded `$` from a literal one without a second parser, each `$` in
/// turn is swapped for a marker character and the text parsed again: a literal `$` (single
/// quotes) comes back as the marker where the `$` was, an escaped one (`\$`) no longer
/// parses, and an expanded one changes the value in any other way.
fn refuse_expansions(text: &str, entries: &[(String, String)], file: &str) -> Result<(), Error> {
    let marker = marker(text, file)?;
    for (at, _) in text.match_indices('$') {
        let mut probe = text.to_string();
        probe.replace_range(at..at + 1, marker.encode_utf8(&mut [0; 4]));
        let Ok(probed) = parse(&probe) else {
            continue;
        };

        if let Some(name) = expanded_entry(entries, &probed, marker) {
            let line = text[..at].matches('\n').count() + 1;
            return Err(Error::config(
                file,
                format!("line {line}: the value of `{name}` holds a `$` that would be expanded"),
                QUOTING,
            ));
        }
    }
    Ok(())
}

/// A private-use character the text does not hold, which dotenvy treats as plain text.
fn marker(text: &str, file: &str) -> Result<char, Error> {
    ('\u{E000}'..='\u{F8FF}')
        .chain('\u{F0000}'..='\u{10FFFD}')
        .find(|c| !text.contains(*c))
        .ok_or_else(|| {
            Error::config(
                file,
                "the file holds every private-use Unicode character",
                "a secrets file holds NAME=value lines; remove what is not one",
            )
        })
}

/// The name of the first entry whose value differs between the two parses other than by
/// `marker` standing where a `$` stood.
fn expanded_entry<'a>(
    entries: &'a [(String, String)],
    probed: &[(String, String)],
    marker: char,
) -> Option<&'a str> {
    entries
        .iter()
        .zip(probed)
        .find(|((_, value), (_, probe))| probe.replace(marker, "$") != *value)
        .map(|((name, _), _)| name.as_str())
}

/// dotenvy's messages quote the line, which may hold a secret: give its number instead.
fn describe(err: &dotenvy::Error, text: &str) -> String {
    match err {
        dotenvy::Error::LineParse(line, index) => {
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
        for (text, line) in [
            ("DB_PASSWORD=ok\nAPI_KEY=SNTL-a$b\n", 2),
            ("DB_PASSWORD=ok\nAPI_KEY=\"SNTL-${HOME}\"\n", 2),
            ("DB_PASSWORD=ok\nAPI_KEY=SNTL-a#b$c\n", 2),
            ("DB_PASSWORD=ok\nAPI_KEY='SNTL-lit'$HOME\n", 2),
            ("DB_PASSWORD=ok\nAPI_KEY=\"SNTL-a\nb $c d\"\n", 3),
            ("DB_PASSWORD=ok\nAPI_KEY=\"SNTL-a\nb ${c}\"\n", 3),
            ("DB_PASSWORD=ok\nAPI_KEY=\"SNTL-a\\\\$b-c\"\n", 2),
            ("DB_PASSWORD=ok\n\nAPI_KEY=SNTL-a$\n", 3),
            ("DB_PASSWORD=ok\nAPI_KEY=SNTL-a$&b\n", 2),
        ] {
            let err = store_of(text).err().expect("the file is refused");
            let shown = format!("{err} {}", err.hints().join(" "));
            assert!(
                shown.contains(&format!("line {line}:")) && shown.contains("API_KEY"),
                "{text:?}: {shown}"
            );
            assert!(!shown.contains("SNTL-"), "{shown}");
        }
    }

    #[test]
    fn a_literal_or_escaped_dollar_is_kept() {
        for (text, value) in [
            ("API_KEY='a$b'\n", "a$b"),
            ("API_KEY=\"a\\$b\"\n", "a$b"),
            ("API_KEY=a\\$b\n", "a$b"),
            ("API_KEY=plain # a comment with $HOME\n", "plain"),
            ("# $HOME\nAPI_KEY=\"x\ny \\$z\"\n", "x\ny $z"),
            ("API_KEY='it'\\''s $5'\n", "it's $5"),
        ] {
            let store = store_of(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(store.get("API_KEY").unwrap().as_deref(), Some(value));
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
