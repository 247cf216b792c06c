//! Secrets of a pipeline file, never printed: values of settings named like secrets
//! (`password`, `token`, `api_key`, `sasl.password`…), values of environment variables named
//! like secrets (`ES_API_KEY`, `KAFKA_PASSWORD`…) or substituted into such settings, and
//! passwords in URLs (`postgres://user:PASSWORD@host`).
//!
//! Loading a pipeline registers them in a process-wide list; [`redact`] replaces each with
//! `***`. The `weir` binary passes its logs, its error messages and `weir validate`'s output
//! through it, so a secret given through `${ENV}` never reaches a terminal or a log file.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Shorter values are not masked: masking `1` or `on` everywhere would garble messages.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Whether a setting or variable name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace(['-', '.'], "_");
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "credential",
        "private_key",
        "sasl_jaas",
        "access_key",
        "auth",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Adds values to the process-wide list (empty and very short values are ignored).
pub fn register<I, S>(values: I)
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let Ok(mut list) = SECRETS.write() else {
        return;
    };
    for v in values {
        let v: String = v.into();
        if v.chars().count() < MIN_SECRET_LEN {
            continue;
        }
        // as JSON logs and Debug output escape it, too
        let escaped = serde_json::to_string(&v).unwrap_or_default();
        let escaped = escaped.trim_matches('"').to_string();
        for form in [v, escaped] {
            if !form.is_empty() && !list.contains(&form) {
                list.push(form);
            }
        }
    }
    // longest first: a secret that contains another is masked whole
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by [`MASK`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let Ok(list) = SECRETS.read() else {
        return Cow::Borrowed(text);
    };
    let mut out = Cow::Borrowed(text);
    for s in list.iter() {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), MASK));
        }
    }
    out
}

/// The password of a URL (`scheme://user:password@host`), if it has one.
pub fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// The name of the YAML setting a `${` at byte `at` of `line` is the value of: the last
/// `name:` before it (block or flow style).
pub fn setting_before(line: &str, at: usize) -> Option<&str> {
    let before = line.get(..at)?.trim_end();
    let before = before.trim_end_matches(['"', '\'']).trim_end();
    let before = before.strip_suffix(':')?.trim_end();
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map_or(0, |i| i + 1);
    let name = before[start..].trim_matches(['"', '\'']);
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised() {
        for n in [
            "password",
            "sasl.password",
            "api_key",
            "ES_API_KEY",
            "bearer_token",
            "KAFKA_SASL_PASSWORD",
            "aws_secret_access_key",
            "ssl.key.password",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "brokers",
            "topic",
            "url",
            "KAFKA_BROKERS",
            "index",
            "group_id",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn registered_values_are_masked_wherever_they_appear() {
        register(["s3cr3t-value-for-test", "ab"]);
        assert_eq!(
            redact("auth failed for s3cr3t-value-for-test at host"),
            "auth failed for *** at host"
        );
        assert_eq!(
            redact("ab stays: too short to mask"),
            "ab stays: too short to mask"
        );
    }

    #[test]
    fn url_passwords_and_settings_are_found() {
        assert_eq!(
            url_password("postgres://weir:pa55@db:5432/x").as_deref(),
            Some("pa55")
        );
        assert_eq!(url_password("postgres://weir@db/x"), None);
        assert_eq!(url_password("http://host:9200"), None);
        let line =
            r#"  search: { elasticsearch: { url: "http://x", api_key: "${ES_API_KEY:-}" } }"#;
        let at = line.find("${").unwrap();
        assert_eq!(setting_before(line, at), Some("api_key"));
        let line = "      sasl.password: ${PW}";
        assert_eq!(
            setting_before(line, line.find("${").unwrap()),
            Some("sasl.password")
        );
        let line = "    brokers: \"${B}\"";
        assert_eq!(
            setting_before(line, line.find("${").unwrap()),
            Some("brokers")
        );
    }
}
