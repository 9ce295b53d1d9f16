//! Secrets the host knows, masked in everything it writes down or shows.
//!
//! One [`Secrets`] registry is shared by a session (it travels with the [`AuditLog`]), and
//! every funnel the host writes through masks with it: the audit log, the event sink (the
//! terminal and `--json` events), the state store's rows, tapes, rollout reports and the
//! command's own output. Masking replaces every occurrence of a registered value by [`MASK`],
//! as CI systems mask their secrets.
//!
//! What is registered:
//! - the password of every URL the fleet file or the command line gives (database and HTTP
//!   bindings, health URLs, the state URL, URLs read through `url_env`), as written and
//!   percent-decoded, and the `password=` of a key-value connection string;
//! - service `env` values whose name names a secret ([`secret_name`]), and the passwords of
//!   URLs in any `env` value;
//! - from the moment an adapter reads a file through the files capability, every value that
//!   file assigns in dotenv syntax (`KEY=value`, `export KEY=value`, quoted values) under a
//!   name that names a secret ([`dotenv_pairs`]).
//!
//! Values shorter than [`MIN_SECRET_CHARS`] characters are not masked: replacing `true`, `8080`
//! or `1.0` wherever they appear would mangle the text, and a secret that short is guessed
//! anyway.
//!
//! [`AuditLog`]: crate::audit::AuditLog

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};

/// What a secret is replaced by.
pub const MASK: &str = "********";

/// Shorter values are never masked (see the module documentation).
pub const MIN_SECRET_CHARS: usize = 6;

/// A shared, growing set of secret values (cheap to clone: clones share the set).
#[derive(Clone, Default)]
pub struct Secrets(Arc<RwLock<Inner>>);

#[derive(Default)]
struct Inner {
    values: BTreeSet<String>,
    /// Every value at once, longest match first; `None` while there are none.
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.len())
    }
}

impl Secrets {
    /// An empty registry.
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// How many values are registered.
    pub fn len(&self) -> usize {
        self.0.read().map(|i| i.values.len()).unwrap_or(0)
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Register `value`; `false` when it is too short to mask (or known already).
    pub fn add(&self, value: &str) -> bool {
        if value.chars().count() < MIN_SECRET_CHARS || value.chars().all(|c| c == '*') {
            return false;
        }
        let Ok(mut inner) = self.0.write() else {
            return false;
        };
        if !inner.values.insert(value.to_string()) {
            return false;
        }
        inner.matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&inner.values)
            .ok();
        true
    }

    /// Register the password of a URL (`scheme://user:password@host/…`), as written and
    /// percent-decoded, or the `password=` of a key-value connection string
    /// (`host=… password=…`).
    pub fn add_url(&self, url: &str) {
        if let Some((_, rest)) = url.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@')
                && let Some((_, password)) = userinfo.split_once(':')
            {
                self.add(password);
                if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                    self.add(&decoded);
                }
            }
            return;
        }
        for word in url.split_whitespace() {
            if let Some(password) = word.strip_prefix("password=") {
                self.add(password.trim_matches(['\'', '"']));
            }
        }
    }

    /// Register an environment variable given to a product: its value when its name names a
    /// secret, and any URL password in it.
    pub fn add_env(&self, name: &str, value: &str) {
        if secret_name(name) {
            self.add(value);
        }
        for word in value.split_whitespace() {
            self.add_url(word.trim_matches(['\'', '"']));
        }
    }

    /// Register the secrets a file's text assigns in dotenv syntax (see [`dotenv_pairs`]);
    /// returns how many new values were registered. Bytes that are not UTF-8 are read lossily.
    pub fn add_dotenv(&self, bytes: &[u8]) -> usize {
        let text = String::from_utf8_lossy(bytes);
        let mut added = 0;
        for (name, values) in dotenv_pairs(&text) {
            if secret_name(&name) {
                for v in values {
                    added += usize::from(self.add(&v));
                    for word in v.split_whitespace() {
                        self.add_url(word);
                    }
                }
            } else {
                for v in values {
                    self.add_url(&v);
                }
            }
        }
        added
    }

    /// `text` with every registered value replaced by [`MASK`] (borrowed when none occurs).
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Ok(inner) = self.0.read() else {
            return Cow::Borrowed(text);
        };
        match &inner.matcher {
            Some(m) if m.is_match(text) => {
                let masks = vec![MASK; inner.values.len()];
                Cow::Owned(m.replace_all(text, &masks))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// [`Secrets::mask`] into an owned string.
    pub fn masked(&self, text: &str) -> String {
        self.mask(text).into_owned()
    }

    /// Mask an optional text in place.
    pub fn mask_option(&self, text: &mut Option<String>) {
        if let Some(t) = text {
            self.mask_string(t);
        }
    }

    /// Mask a string in place.
    pub fn mask_string(&self, text: &mut String) {
        if let Cow::Owned(m) = self.mask(text) {
            *text = m;
        }
    }

    /// Mask every string in a JSON value (object keys included).
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => self.mask_string(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.mask_json(&mut v);
                    map.insert(self.masked(&k), v);
                }
            }
            _ => {}
        }
    }

    /// A serialisable value as JSON with every string masked.
    pub fn masked_json<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<serde_json::Value, serde_json::Error> {
        let mut json = serde_json::to_value(value)?;
        self.mask_json(&mut json);
        Ok(json)
    }
}

/// Whether a variable's name names a secret: it contains `SECRET`, `PASSWORD`, `PASSWD`,
/// `PASSPHRASE`, `TOKEN`, `KEY`, `CREDENTIAL` or `PRIVATE`, in any case.
pub fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "PRIVATE",
    ]
    .iter()
    .any(|word| upper.contains(word))
}

/// The assignments of a dotenv-style text: `NAME=value`, `export NAME=value`, values bare
/// (up to a ` #` comment), `'single-quoted'` (literal) or `"double-quoted"` (with `\"`, `\\`,
/// `\n` escapes; both the text as written and unescaped are returned). Lines that are not
/// assignments are skipped, so a malformed line hides nothing after it. Names are letters,
/// digits, `_`, `.` and `-`, not starting with a digit.
///
/// Hand-written rather than `dotenvy`: that crate substitutes `${VAR}` from the host's own
/// environment and stops at the first line it cannot parse, neither of which suits finding
/// what a file assigns.
pub fn dotenv_pairs(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => line,
        };
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim_end();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            continue;
        }
        let value = value.trim_start();
        let values = if let Some(rest) = value.strip_prefix('\'') {
            vec![rest.split('\'').next().unwrap_or("").to_string()]
        } else if let Some(rest) = value.strip_prefix('"') {
            let (raw, unescaped) = double_quoted(rest);
            if raw == unescaped {
                vec![raw]
            } else {
                vec![raw, unescaped]
            }
        } else {
            let bare = match value.find(" #").or_else(|| value.find("\t#")) {
                Some(i) => &value[..i],
                None => value,
            };
            vec![bare.trim_end().to_string()]
        };
        out.push((name.to_string(), values));
    }
    out
}

/// The inside of a double-quoted value (after its opening quote): as written, and unescaped.
fn double_quoted(rest: &str) -> (String, String) {
    let mut raw = String::new();
    let mut unescaped = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => {
                let next = chars.next();
                raw.push('\\');
                if let Some(n) = next {
                    raw.push(n);
                }
                match next {
                    Some('n') => unescaped.push('\n'),
                    Some('t') => unescaped.push('\t'),
                    Some(n) => unescaped.push(n),
                    None => {}
                }
            }
            c => {
                raw.push(c);
                unescaped.push(c);
            }
        }
    }
    (raw, unescaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_are_read_as_dotenv_reads_them() {
        let text = "# comment\n\
            DB_PASSWORD=hunter2-very-secret\n\
            API_TOKEN='tok-abc 123' # trailing comment\n\
            export SECRET_KEY=\"sk-\\\"quoted\\\"-999\"\n\
            \texport   Private_Thing = spaced-value  # note\n\
            NAME=visible\n\
            not an assignment\n\
            9BAD=x\n\
            EMPTY=\n";
        let pairs = dotenv_pairs(text);
        let get = |n: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get("DB_PASSWORD"), vec!["hunter2-very-secret"]);
        assert_eq!(get("API_TOKEN"), vec!["tok-abc 123"]);
        assert_eq!(
            get("SECRET_KEY"),
            vec![r#"sk-\"quoted\"-999"#, r#"sk-"quoted"-999"#]
        );
        assert_eq!(get("Private_Thing"), vec!["spaced-value"]);
        assert_eq!(get("NAME"), vec!["visible"]);
        assert_eq!(get("EMPTY"), vec![""]);
        assert!(get("9BAD").is_empty());
        assert_eq!(pairs.len(), 6);
    }

    #[test]
    fn registered_values_are_masked_everywhere_and_short_ones_never() {
        let s = Secrets::new();
        let added = s.add_dotenv(
            b"DB_PASSWORD=hunter2-very-secret\nAPI_TOKEN='tok-abc 123'\nNAME=visible-value\nKEY_TTL=3600\n",
        );
        assert_eq!(
            added, 2,
            "the short value and the non-secret name are not registered"
        );
        s.add_url("postgres://app:p%40ss-word!@db:5432/meta");
        s.add_url("host=db user=app password='kv-secret-1'");
        s.add_env("PG_URL", "postgres://u:env-url-pass@h/db");
        s.add_env("APP_SECRET", "svc-env-secret");
        s.add_env("PLAIN", "plain-value-123");
        let text = "hunter2-very-secret tok-abc 123 p%40ss-word! p@ss-word! kv-secret-1 \
            env-url-pass svc-env-secret visible-value 3600 plain-value-123";
        assert_eq!(
            s.mask(text),
            "******** ******** ******** ******** ******** ******** ******** visible-value 3600 plain-value-123"
        );
        assert!(matches!(s.mask("nothing here"), Cow::Borrowed(_)));
        let mut json =
            serde_json::json!({"a": ["x hunter2-very-secret y", 1], "hunter2-very-secret": null});
        s.mask_json(&mut json);
        assert_eq!(
            json,
            serde_json::json!({"a": ["x ******** y", 1], "********": null})
        );
        assert!(!s.add("short"));
        assert!(!s.add("********"));
    }

    #[test]
    fn names_that_name_secrets() {
        for yes in [
            "DB_PASSWORD",
            "api_token",
            "SECRET_KEY",
            "ssh_passphrase",
            "AWS_CREDENTIALS",
        ] {
            assert!(secret_name(yes), "{yes}");
        }
        for no in ["NAME", "PORT", "DATABASE_URL", "LOG_LEVEL"] {
            assert!(!secret_name(no), "{no}");
        }
    }
}
