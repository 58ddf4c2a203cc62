//! Masks secret values in everything slipway prints or logs.
//!
//! Every value loaded from a secrets file is registered here together with its base64 and
//! URL-encoded forms; output paths call [`redact`] before writing.

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

    let mut forms = vec![
        secret.to_string(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        url_encode(secret),
        url_encode(secret).replace("%20", "+"),
    ];
    let mut list = registry().write().unwrap_or_else(|e| e.into_inner());
    forms.retain(|f| !list.contains(f));
    list.extend(forms);
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
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
    fn leaves_short_values_alone() {
        register("ab");
        assert_eq!(redact("ab cd"), "ab cd");
    }
}
