//! The one way a URL is shown: without its userinfo. Every message, audit record, journal entry,
//! tape and report that names a URL (a database URL, an HTTP base, a state store) formats it
//! with [`url_for_display`], so neither the password nor the user name is ever written.

/// What replaces the userinfo (and any credential-like query value) of a shown URL.
pub const HIDDEN: &str = "***";

/// Query keys whose values are credentials (`?password=…`, `?user=…`), compared
/// case-insensitively by substring.
const SECRET_KEYS: [&str; 6] = ["pass", "user", "secret", "token", "key", "auth"];

/// `url` as it may be shown: `scheme://***@host:port/path?query`, with the user and password
/// removed (replaced by `***` when there were any) and credential-like query values hidden. A
/// text that does not parse as a URL is shown only up to its scheme.
pub fn url_for_display(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if !parsed.cannot_be_a_base() => shown(parsed),
        _ => match url.split_once("://") {
            Some((_, rest)) if !rest.contains('@') && !rest.contains('?') => url.to_string(),
            Some((scheme, _)) => format!("{scheme}://{HIDDEN} (a URL that does not parse)"),
            None if url.contains('@') || url.contains('=') => {
                format!("{HIDDEN} (a URL that does not parse)")
            }
            None => url.to_string(),
        },
    }
}

fn shown(mut url: url::Url) -> String {
    let had_userinfo = !url.username().is_empty() || url.password().is_some();
    // Both fail only for URLs that cannot have userinfo (then there is none to remove).
    let _ = url.set_password(None);
    let _ = url.set_username("");
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let v = if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                    HIDDEN.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.set_fragment(None);
    let text = url.to_string();
    if !had_userinfo {
        return text;
    }
    match text.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{HIDDEN}@{rest}"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_never_shows() {
        let cases = [
            (
                "postgres://admin:s3cretpw@db.example:5432/meta",
                "postgres://***@db.example:5432/meta",
            ),
            (
                "postgres://admin@db:5432/meta",
                "postgres://***@db:5432/meta",
            ),
            (
                "http://u:p@127.0.0.1:8080/api",
                "http://***@127.0.0.1:8080/api",
            ),
            ("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api"),
            (
                "postgres://db/meta?user=admin&password=s3cretpw&sslmode=require",
                "postgres://db/meta?user=***&password=***&sslmode=require",
            ),
            (
                "mysql://root:pw@127.0.0.1:3306/lake",
                "mysql://***@127.0.0.1:3306/lake",
            ),
            (
                "kwdb://root@127.0.0.1:26257/defaultdb",
                "kwdb://***@127.0.0.1:26257/defaultdb",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(url_for_display(url), want, "{url}");
        }
        for broken in ["postgres://admin:s3cretpw@[bad/db", "admin:s3cretpw@host"] {
            let shown = url_for_display(broken);
            assert!(
                !shown.contains("s3cretpw") && !shown.contains("admin"),
                "{shown}"
            );
        }
    }
}
