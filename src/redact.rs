//! Masks secret values in everything slipway prints or logs.
//!
//! Every value loaded from a secrets file is registered here together with the forms it
//! takes when relayed: base64, percent-encoded (either hex case, `+` for spaces) and
//! JSON-escaped. Output paths call [`redact`] before writing; a panic report is masked by
//! the hook [`mask_panics`] installs.

use std::sync::{OnceLock, RwLock};

use base64::Engine;

const MASK: &str = "***";

/// Values shorter than this are not masked: masking "a" would garble every line.
const MIN_LEN: usize = 4;

fn registry() -> &'static RwLock<Vec<String>> {
    static REGISTRY: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(Vec::new()))
}

/// Registers a secret value and its encoded forms for masking.
pub fn register(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }

    let mut forms = forms(secret);
    let mut list = registry().write().unwrap_or_else(|e| e.into_inner());
    forms.retain(|f| !list.contains(f));
    list.extend(forms);
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// The secret and every form it may take in relayed text. Padded base64 is masked whole
/// (the longest forms are replaced first), unpadded base64 where it stands alone.
fn forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    let upper = url_encode(secret);
    let lower = lowercase_hex(&upper);
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json[1..json.len() - 1].to_string();
    let go_json = json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let mut forms = vec![
        secret.to_string(),
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        upper.replace("%20", "+"),
        lower.replace("%20", "+"),
        upper,
        lower,
        json,
        go_json,
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// Returns `text` with every registered secret form replaced by `***`.
pub fn redact(text: &str) -> String {
    let list = registry().read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// Percent-encodes everything outside the unreserved set of RFC 3986.
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `%2F` becomes `%2f`: the hex digits only, never the text between escapes.
fn lowercase_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            out.push(c);
            if c == '%' {
                hex_left = 2;
            }
        }
    }
    out
}

/// Sends every panic report through [`redact`] before it reaches stderr.
pub fn mask_panics() {
    mask_panics_into(|report| eprintln!("{report}"));
}

/// Installs a panic hook that hands `write` the masked report.
fn mask_panics_into(write: impl Fn(&str) + Send + Sync + 'static) {
    std::panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::capture();
        write(&redact(&format!(
            "slipway stopped on an internal error (a bug; the lock is freed when the \
             process exits): {info}\n{backtrace}"
        )));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_plain_base64_and_url_forms() {
        let secret = "SNTL-7q$P&x 'y\"z;#*";
        register(secret);

        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let line = format!(
            "pw={secret} b64={b64} url=postgres://app:{}@db",
            url_encode(secret)
        );
        let masked = redact(&line);

        assert_eq!(masked, "pw=*** b64=*** url=postgres://app:***@db");
    }

    #[test]
    fn masks_lowercase_percent_encoding_and_plus_for_spaces() {
        let secret = "low-hex $ecret/with space";
        register(secret);

        let masked = redact(
            "a=low-hex%20%24ecret%2fwith%20space b=low-hex+%24ecret%2Fwith+space \
             c=low-hex+%24ecret%2fwith+space",
        );

        assert_eq!(masked, "a=*** b=*** c=***");
    }

    #[test]
    fn masks_unpadded_and_url_safe_base64() {
        let secret = "b64 secret?>>";
        register(secret);
        let standard = base64::engine::general_purpose::STANDARD.encode(secret);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(secret);
        assert_ne!(
            standard, url_safe,
            "the secret has bytes that differ in url-safe"
        );

        let masked = redact(&format!(
            "{standard} {} {url_safe}",
            standard.trim_end_matches('=')
        ));

        assert_eq!(masked, "*** *** ***");
    }

    #[test]
    fn masks_json_escaped_forms() {
        let secret = "json \"quoted\" back\\slash <&>";
        register(secret);
        let serialized =
            serde_json::to_string_pretty(&serde_json::json!({ "error": secret })).unwrap();
        let go_style = r#"json \"quoted\" back\\slash \u003c\u0026\u003e"#;

        let masked = redact(&format!("{serialized} {go_style}"));

        assert_eq!(masked, "{\n  \"error\": \"***\"\n} ***");
    }

    #[test]
    fn a_panic_report_is_masked() {
        let secret = "panic-secret-value 42";
        register(secret);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let previous = std::panic::take_hook();

        let sink = seen.clone();
        mask_panics_into(move |report| sink.lock().unwrap().push_str(report));
        let result = std::panic::catch_unwind(|| panic!("could not use {secret}"));
        std::panic::set_hook(previous);

        assert!(result.is_err());
        let report = seen.lock().unwrap().clone();
        assert!(report.contains("could not use ***"), "{report}");
        assert!(!report.contains(secret), "{report}");
    }

    #[test]
    fn leaves_short_values_alone() {
        register("ab");
        assert_eq!(redact("ab cd"), "ab cd");
    }
}
