//! Where two JSON values differ, path by path (`$.Ok.facts[1].value`), for replay reports.

use serde::Serialize;
use serde_json::Value;

/// One place where the recorded and the replayed value differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// JSON path, e.g. `$.Ok.version`.
    pub path: String,
    /// What the tape holds there (absent: `null`).
    pub recorded: Option<Value>,
    /// What the replay gave there (absent: `null`).
    pub replayed: Option<Value>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| match v {
            Some(v) => short(v),
            None => "(absent)".into(),
        };
        write!(
            f,
            "{}:\n      - recorded {}\n      + replayed {}",
            self.path,
            show(&self.recorded),
            show(&self.replayed)
        )
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= 200 {
        return text;
    }
    format!("{}…", text.chars().take(200).collect::<String>())
}

/// The first `limit` differences between `recorded` and `replayed`, in document order.
pub fn differences(recorded: &Value, replayed: &Value, limit: usize) -> Vec<Difference> {
    let mut out = Vec::new();
    walk("$", Some(recorded), Some(replayed), limit, &mut out);
    out
}

fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, limit: usize, out: &mut Vec<Difference>) {
    if out.len() >= limit || a == b {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().collect();
            keys.extend(y.keys().filter(|k| !x.contains_key(*k)));
            for k in keys {
                walk(&format!("{path}.{k}"), x.get(k), y.get(k), limit, out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                walk(&format!("{path}[{i}]"), x.get(i), y.get(i), limit, out);
            }
        }
        _ => out.push(Difference {
            path: path.to_string(),
            recorded: a.cloned(),
            replayed: b.cloned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_each_differing_leaf() {
        let a = json!({"Ok": {"version": "3.10.0", "facts": [{"k": "a"}, {"k": "b"}]}});
        let b = json!({"Ok": {"version": "3.9.0", "facts": [{"k": "a"}], "extra": 1}});
        let d = differences(&a, &b, 10);
        let at = |p: &str| d.iter().find(|d| d.path == p).expect(p);
        assert_eq!(d.len(), 3);
        assert_eq!(at("$.Ok.version").replayed, Some(json!("3.9.0")));
        assert_eq!(at("$.Ok.facts[1]").replayed, None);
        assert_eq!(at("$.Ok.extra").recorded, None);
        assert!(differences(&a, &a, 10).is_empty());
        assert_eq!(differences(&a, &b, 1).len(), 1);
        assert!(
            at("$.Ok.version")
                .to_string()
                .contains("- recorded \"3.10.0\"")
        );
    }

    #[test]
    fn a_different_kind_is_one_difference() {
        let d = differences(&json!({"Ok": 1}), &json!({"Err": {"m": "x"}}), 10);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "$.Ok");
    }
}
