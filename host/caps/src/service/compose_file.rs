//! Editing a Compose file's `services.<name>.image` in place: a YAML parser finds the exact span
//! of that one scalar, only those characters are replaced, and the result is parsed again to
//! check the edit. Comments, order, quoting and layout stay as the operator wrote them.

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
    },
    Seq,
}

fn byte_index(text: &str, char_index: usize) -> usize {
    text.char_indices()
        .nth(char_index)
        .map(|(b, _)| b)
        .unwrap_or(text.len())
}

/// Find `services.<service>.image`.
pub fn find_image(text: &str, service: &str) -> Result<ImageScalar, String> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| format!("the Compose file is not valid YAML: {e}"))?;
        // Whether this event is a value, and the key it belongs to.
        let mut value_key: Option<String> = None;
        if let Some(Frame::Map {
            key,
            awaiting_value,
        }) = stack.last_mut()
        {
            if *awaiting_value {
                value_key = key.take();
                *awaiting_value = false;
            } else if let Event::Scalar(k, ..) = &event {
                *key = Some(k.to_string());
                *awaiting_value = true;
                continue;
            } else if !matches!(event, Event::MappingEnd) {
                return Err("the Compose file uses a non-scalar mapping key".into());
            }
        }
        match event {
            Event::MappingStart(..) => {
                path.push(value_key.unwrap_or_default());
                stack.push(Frame::Map {
                    key: None,
                    awaiting_value: false,
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
                let at_service = path.len() == 3 && path[1] == "services" && path[2] == service;
                if at_service && value_key.as_deref() == Some("image") {
                    let quote = match style {
                        ScalarStyle::SingleQuoted => Some('\''),
                        ScalarStyle::DoubleQuoted => Some('"'),
                        ScalarStyle::Plain => None,
                        _ => {
                            return Err(format!(
                                "services.{service}.image is a block scalar; write it on one line"
                            ));
                        }
                    };
                    let start = byte_index(text, span.start.index());
                    let end = byte_index(text, span.end.index());
                    return Ok(ImageScalar {
                        value: value.to_string(),
                        range: start..end,
                        quote,
                    });
                }
            }
            _ => {}
        }
    }
    Err(format!("the Compose file has no services.{service}.image"))
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
}
