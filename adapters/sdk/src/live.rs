//! Reading a live instance through the host's capabilities, with errors that say which binding
//! and what failed. Every adapter reads rows, counts, files and JSON endpoints the same way.

use crate::{AdapterError, Check, Value, db, describe_cap_error, error, files, http, value_text};

fn cap(binding: &str, what: &str, e: &crate::CapError) -> AdapterError {
    error(format!(
        "{what} (binding `{binding}`): {}",
        describe_cap_error(e)
    ))
}

/// All rows of a read query.
pub fn rows(binding: &str, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, AdapterError> {
    db::query(binding, sql, params)
        .map(|r| r.rows)
        .map_err(|e| cap(binding, &format!("query `{sql}` failed"), &e))
}

/// The first column of every row, as text (`NULL` rows are skipped).
pub fn column(binding: &str, sql: &str, params: &[Value]) -> Result<Vec<String>, AdapterError> {
    Ok(rows(binding, sql, params)?
        .iter()
        .filter_map(|r| r.first().and_then(value_text))
        .collect())
}

/// The first value of the first row, as text.
pub fn scalar(binding: &str, sql: &str, params: &[Value]) -> Result<Option<String>, AdapterError> {
    Ok(column(binding, sql, params)?.into_iter().next())
}

/// A count (`SELECT count(*) …`).
pub fn count(binding: &str, sql: &str, params: &[Value]) -> Result<u64, AdapterError> {
    let text = scalar(binding, sql, params)?.unwrap_or_default();
    text.trim()
        .parse()
        .map_err(|_| error(format!("expected a count from `{sql}`, got `{text}`")))
}

/// Whether a table exists in the bound database.
pub fn table_exists(binding: &str, table: &str) -> Result<bool, AdapterError> {
    db::table_exists(binding, table).map_err(|e| cap(binding, "cannot look up a table", &e))
}

/// A file under a files binding, as text; `None` when it does not exist.
pub fn read_text(binding: &str, path: &str) -> Result<Option<String>, AdapterError> {
    match files::exists(binding, path) {
        Ok(false) => return Ok(None),
        Ok(true) => {}
        Err(e) => return Err(cap(binding, &format!("cannot look for `{path}`"), &e)),
    }
    String::from_utf8(read(binding, path)?)
        .map(Some)
        .map_err(|_| error(format!("`{path}` (binding `{binding}`) is not UTF-8 text")))
}

/// A file under a files binding, as bytes (an error when it does not exist).
pub fn read(binding: &str, path: &str) -> Result<Vec<u8>, AdapterError> {
    files::read(binding, path).map_err(|e| cap(binding, &format!("cannot read `{path}`"), &e))
}

/// Write a text file under a files binding.
pub fn write_text(binding: &str, path: &str, text: &str) -> Result<(), AdapterError> {
    files::write(binding, path, text.as_bytes())
        .map_err(|e| cap(binding, &format!("cannot write `{path}`"), &e))
}

/// An HTTP answer: status and body text.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body as text (lossy).
    pub body: String,
}

impl Answer {
    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// A string field of the JSON body.
    pub fn field(&self, name: &str) -> Option<String> {
        self.json()?.get(name)?.as_str().map(str::to_string)
    }
}

/// `GET path` on an http binding.
pub fn get(binding: &str, path: &str) -> Result<Answer, AdapterError> {
    let r = http::request(binding, "GET", path, &[])
        .map_err(|e| cap(binding, &format!("GET {path} failed"), &e))?;
    Ok(Answer {
        status: r.status,
        body: String::from_utf8_lossy(&r.body).into_owned(),
    })
}

/// One verification check.
pub fn check(name: &str, passed: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        passed,
        detail: detail.into(),
    }
}

/// A check that an endpoint answers 200.
pub fn endpoint_ok(name: &str, binding: &str, path: &str) -> Check {
    match get(binding, path) {
        Ok(a) => check(
            name,
            a.status == 200,
            format!("{path} answered {}", a.status),
        ),
        Err(e) => check(name, false, e.message),
    }
}
