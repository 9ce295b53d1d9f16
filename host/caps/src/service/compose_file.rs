//! Editing a Compose file's `services.<name>.image` in place: a YAML parser finds the exact span
//! of that one scalar, only those characters are replaced, and the result is parsed again to
//! check the edit. Comments, order, quoting and layout stay as the operator wrote them.
//!
//! The edit is refused whenever docker-compose could see another image than the one edited: a
//! mapping with a key written twice (YAML parsers disagree on which one wins; docker-compose's
//! takes the last), an `image` value that docker-compose interpolates (`$VAR`, `${VAR}`), and a
//! service built from `extends`, anchors, aliases or merge keys (`<<`).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// Where the image scalar is, and how it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageScalar {
    /// The image reference.
    pub value: String,
    /// Byte range of the scalar's text in the file (quotes included when quoted).
    pub range: std::ops::Range<usize>,
    /// Whether it is written with quotes, and which.
    pub quote: Option<char>,
}

enum Frame {
    Map {
        key: Option<String>,
        awaiting_value: bool,
        /// Each key seen in this mapping, with the line it is on.
        seen: HashMap<String, usize>,
    },
    Seq,
}

fn byte_index(text: &str, char_index: usize) -> usize {
    text.char_indices()
        .nth(char_index)
        .map(|(b, _)| b)
        .unwrap_or(text.len())
}

/// Whether `path` (the keys leading to a node, the root's being empty) is on the way to the
/// service: the root, `services`, or the service itself and anything in it.
fn on_service_path(path: &[String], service: &str) -> bool {
    match path {
        [_] => true,
        [_, s] => s == "services",
        [_, s, name, ..] => s == "services" && name == service,
        [] => false,
    }
}

/// Find `services.<service>.image`, refusing a file where docker-compose could read another
/// image for that service than the scalar found. Errors name the line and the fix.
pub fn find_image(text: &str, service: &str) -> Result<ImageScalar, String> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut documents = 0usize;
    let mut found: Option<ImageScalar> = None;
    let in_service =
        |path: &[String]| path.len() >= 3 && path[1] == "services" && path[2] == service;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| format!("not valid YAML: {e}"))?;
        let line = span.start.line();
        // Whether this event is a value, and the key it belongs to.
        let mut value_key: Option<String> = None;
        if let Some(Frame::Map {
            key,
            awaiting_value,
            seen,
        }) = stack.last_mut()
        {
            if *awaiting_value {
                value_key = key.take();
                *awaiting_value = false;
            } else if let Event::Scalar(k, ..) = &event {
                if let Some(first) = seen.insert(k.to_string(), line) {
                    return Err(format!(
                        "line {line}: the key `{k}` is written twice in one mapping (first on line {first}); \
                         YAML tools disagree on which one counts (docker-compose takes the last). \
                         Fix: keep one `{k}:` and remove the other"
                    ));
                }
                if k == "<<" && on_service_path(&path, service) {
                    return Err(format!(
                        "line {line}: a merge key (`<<`) on the way to services.{service} can \
                         make docker-compose see another image than the one Upshift edits. \
                         Fix: write services.{service} out in full, without `<<`"
                    ));
                }
                if k == "extends" && path.len() == 3 && in_service(&path) {
                    return Err(format!(
                        "line {line}: services.{service} uses `extends`, so its image may come \
                         from another service or file. Fix: write the service out in full, \
                         with its own `image:`"
                    ));
                }
                *key = Some(k.to_string());
                *awaiting_value = true;
                continue;
            } else if !matches!(event, Event::MappingEnd) {
                return Err(format!(
                    "line {line}: a non-scalar mapping key. Fix: use plain keys"
                ));
            }
        }
        let anchored = match &event {
            Event::MappingStart(anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::Scalar(_, _, anchor, _) => *anchor > 0,
            _ => false,
        };
        let mut node_path = path.clone();
        if matches!(
            event,
            Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Scalar(..)
                | Event::Alias(_)
        ) {
            node_path.push(value_key.clone().unwrap_or_default());
        }
        if in_service(&node_path) && (anchored || matches!(event, Event::Alias(_))) {
            return Err(format!(
                "line {line}: services.{service} uses a YAML anchor or alias (`&`/`*`), so \
                 the image docker-compose sees may not be the one Upshift edits, or the edit \
                 may change another service. Fix: write the service out in full, without \
                 anchors or aliases"
            ));
        }
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(format!(
                        "line {line}: more than one YAML document. \
                         Fix: keep one document (no second `---`)"
                    ));
                }
            }
            Event::MappingStart(..) => {
                path.push(value_key.unwrap_or_default());
                stack.push(Frame::Map {
                    key: None,
                    awaiting_value: false,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceStart(..) => {
                path.push(value_key.unwrap_or_default());
                stack.push(Frame::Seq);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                path.pop();
            }
            Event::Scalar(value, style, ..) => {
                let at_service = path.len() == 3 && in_service(&path);
                if at_service && value_key.as_deref() == Some("image") {
                    let quote = match style {
                        ScalarStyle::SingleQuoted => Some('\''),
                        ScalarStyle::DoubleQuoted => Some('"'),
                        ScalarStyle::Plain => None,
                        _ => {
                            return Err(format!(
                                "line {line}: services.{service}.image is a block scalar. \
                                 Fix: write it on one line"
                            ));
                        }
                    };
                    if value.contains('$') {
                        return Err(format!(
                            "line {line}: services.{service}.image is `{value}`, which \
                             docker-compose interpolates (`$VAR`/`${{VAR}}`), so the image it \
                             runs is not the one written. Fix: write the image reference out \
                             literally, e.g. `image: repo/name:1.2.3`"
                        ));
                    }
                    let start = byte_index(text, span.start.index());
                    let end = byte_index(text, span.end.index());
                    // Not returned at once: the rest of the file is checked too (a second
                    // `image:` key, a second document).
                    found = Some(ImageScalar {
                        value: value.to_string(),
                        range: start..end,
                        quote,
                    });
                }
            }
            _ => {}
        }
    }
    found.ok_or_else(|| {
        format!("no services.{service}.image; fix: name a service that sets `image:`")
    })
}

/// `text` with `services.<service>.image` set to `image`, everything else unchanged.
pub fn set_image(text: &str, service: &str, image: &str) -> Result<String, String> {
    let found = find_image(text, service)?;
    let written = match found.quote {
        Some('"') => format!("\"{}\"", image.replace('\\', "\\\\").replace('"', "\\\"")),
        Some(q) => format!("{q}{}{q}", image.replace('\'', "''")),
        None => image.to_string(),
    };
    let original = &text[found.range.clone()];
    // The span must be exactly the scalar as written; anything else means we misread the file.
    let expected = match found.quote {
        Some(_) => original.starts_with(['"', '\'']),
        None => original == found.value,
    };
    if !expected {
        return Err(format!(
            "cannot edit services.{service}.image safely (found `{original}`)"
        ));
    }
    let mut out = String::with_capacity(text.len() + image.len());
    out.push_str(&text[..found.range.start]);
    out.push_str(&written);
    out.push_str(&text[found.range.end..]);
    let check = find_image(&out, service)?;
    if check.value != image {
        return Err(format!(
            "editing services.{service}.image did not give `{image}`"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# KWDB for the data team
version: \"3\"
services:
  # the database
  kwdb:
    image: kwdb/kwdb:2.2.0   # pinned by ops
    network_mode: host
    environment:
      - SVC_PORT=26257
  grafana:
    image: \"grafana/grafana:10.0.0\"
";

    #[test]
    fn only_the_image_changes() {
        let out = set_image(FILE, "kwdb", "kwdb/kwdb:3.0.0").expect("edit");
        assert_eq!(out, FILE.replace("kwdb/kwdb:2.2.0", "kwdb/kwdb:3.0.0"));
        let out = set_image(FILE, "grafana", "grafana/grafana:11.0.0").expect("edit");
        assert_eq!(
            out,
            FILE.replace("\"grafana/grafana:10.0.0\"", "\"grafana/grafana:11.0.0\"")
        );
        assert_eq!(
            find_image(FILE, "kwdb").expect("find").value,
            "kwdb/kwdb:2.2.0"
        );
        assert!(
            set_image(FILE, "nope", "x")
                .unwrap_err()
                .contains("no services.nope.image")
        );
        assert!(
            set_image("services: [", "kwdb", "x")
                .unwrap_err()
                .contains("not valid YAML")
        );
    }

    /// Every way docker-compose could see another image than the edited one is refused, with
    /// the line and a fix; nothing is edited.
    #[test]
    fn files_where_compose_could_see_another_image_are_refused() {
        let cases: &[(&str, String, &str)] = &[
            (
                "two image keys (docker-compose takes the last)",
                FILE.replace(
                    "    network_mode: host\n",
                    "    network_mode: host\n    image: evil/evil:1\n",
                ),
                "line 8: the key `image` is written twice in one mapping (first on line 6)",
            ),
            (
                "the second image key quoted",
                FILE.replace(
                    "    network_mode: host\n",
                    "    network_mode: host\n    \"image\": evil/evil:1\n",
                ),
                "the key `image` is written twice",
            ),
            (
                "the service written twice",
                format!("{FILE}  kwdb:\n    image: evil/evil:1\n"),
                "the key `kwdb` is written twice",
            ),
            (
                "services written twice",
                format!("{FILE}services:\n  kwdb:\n    image: evil/evil:1\n"),
                "the key `services` is written twice",
            ),
            (
                "a top-level key written twice",
                format!("{FILE}version: \"3\"\n"),
                "the key `version` is written twice",
            ),
            (
                "a duplicate inside the service",
                FILE.replace(
                    "      - SVC_PORT=26257\n",
                    "      - SVC_PORT=26257\n    network_mode: bridge\n",
                ),
                "the key `network_mode` is written twice",
            ),
            (
                "${VAR} interpolation",
                FILE.replace("kwdb/kwdb:2.2.0", "kwdb/kwdb:${TAG}"),
                "line 6: services.kwdb.image is `kwdb/kwdb:${TAG}`, which docker-compose interpolates",
            ),
            (
                "$VAR interpolation",
                FILE.replace("kwdb/kwdb:2.2.0", "$REPO:2.2.0"),
                "which docker-compose interpolates",
            ),
            (
                "a default in the interpolation",
                FILE.replace("kwdb/kwdb:2.2.0", "\"kwdb/kwdb:${TAG:-2.2.0}\""),
                "which docker-compose interpolates",
            ),
            (
                "extends",
                FILE.replace(
                    "    network_mode: host\n",
                    "    network_mode: host\n    extends:\n      service: grafana\n",
                ),
                "services.kwdb uses `extends`",
            ),
            (
                "a merge key in the service",
                format!(
                    "x-base: &base\n  image: evil/evil:1\n{}",
                    FILE.replace(
                        "    network_mode: host\n",
                        "    <<: *base\n    network_mode: host\n"
                    )
                ),
                "a merge key (`<<`)",
            ),
            (
                "a merge key in services",
                format!(
                    "x-more: &more\n  kwdb2:\n    image: x/y:1\n{}",
                    FILE.replace("services:\n", "services:\n  <<: *more\n")
                ),
                "a merge key (`<<`)",
            ),
            (
                "the image as an alias",
                format!(
                    "x-img: &img evil/evil:1\n{}",
                    FILE.replace("image: kwdb/kwdb:2.2.0", "image: *img")
                ),
                "uses a YAML anchor or alias",
            ),
            (
                "an anchored service another one aliases",
                format!(
                    "{}  copy: *kw\n",
                    FILE.replace("  kwdb:\n", "  kwdb: &kw\n")
                ),
                "uses a YAML anchor or alias",
            ),
            (
                "an anchored image",
                FILE.replace("image: kwdb/kwdb:2.2.0", "image: &img kwdb/kwdb:2.2.0"),
                "uses a YAML anchor or alias",
            ),
            (
                "a second document",
                format!("{FILE}---\nservices:\n  kwdb:\n    image: evil/evil:1\n"),
                "more than one YAML document",
            ),
        ];
        for (what, text, expected) in cases {
            let err =
                set_image(text, "kwdb", "kwdb/kwdb:3.0.0").expect_err(&format!("{what}: refused"));
            assert!(err.contains(expected), "{what}: {err}");
            assert!(
                err.contains("line ") && err.to_lowercase().contains("fix"),
                "{what}: names the line and the fix: {err}"
            );
            assert!(find_image(text, "kwdb").is_err(), "{what}");
        }
        // Anchors the edited service does not use, and `$` elsewhere, are fine.
        let fine = format!(
            "x-logging: &logging\n  driver: json-file\n{}",
            FILE.replace(
                "      - SVC_PORT=26257\n",
                "      - SVC_PORT=26257\n      - HOME=$HOME\n"
            )
            .replace(
                "    image: \"grafana",
                "    logging: *logging\n    image: \"grafana"
            )
        );
        let out = set_image(&fine, "kwdb", "kwdb/kwdb:3.0.0").expect("edit");
        assert_eq!(out, fine.replace("kwdb/kwdb:2.2.0", "kwdb/kwdb:3.0.0"));
    }
}
