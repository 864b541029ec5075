//! Config errors in the operator's words: where a key was written (the file's line and column,
//! the environment variable, or the flag), the key as the user spelled it (no profile prefix),
//! what was expected with an example, and the nearest valid key or value. figment knows the key
//! path but no positions, so the YAML text is walked once with a span-aware parser
//! ([`Positions`]) and the key path is looked up in it.

use super::{ConfigError, ENV_PREFIX};
use figment::error::{Actual, Kind};
use saphyr_parser::{Event, Parser, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a config value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A position in the YAML document (the file when `path` is set).
    File {
        /// The config file; `None` for a document given as text.
        path: Option<PathBuf>,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// An `OPENIM_GATEWAY_*` environment variable, as set.
    Env(String),
    /// A command-line flag, e.g. `--upstream`.
    Flag(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File {
                path: Some(path),
                line,
                column,
            } => write!(f, "{} line {line}, column {column}", path.display()),
            Self::File {
                path: None,
                line,
                column,
            } => write!(f, "line {line}, column {column}"),
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The position of every key of a YAML document, by dotted path (`defaults.timeout`; list items
/// by index, `upstreams.default.endpoints.0`).
#[derive(Debug, Default)]
pub(super) struct Positions {
    path: Option<PathBuf>,
    keys: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Walks `text`; a YAML syntax error is returned with its position.
    pub(super) fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut events = Vec::new();
        for event in Parser::new_from_str(text) {
            match event {
                Ok(event) => events.push(event),
                Err(e) => {
                    return Err(ConfigError::Syntax {
                        at: Origin::File {
                            path: path.map(Path::to_owned),
                            line: e.marker().line(),
                            column: e.marker().col() + 1,
                        },
                        problem: e.info().to_owned(),
                    });
                }
            }
        }
        let mut out = Self {
            path: path.map(Path::to_owned),
            keys: HashMap::new(),
        };
        let mut i = 0;
        while i < events.len() {
            let start = matches!(events[i].0, Event::DocumentStart(_));
            i += 1;
            if start {
                out.node(&events, &mut i, "");
            }
        }
        Ok(out)
    }

    /// Records the keys of the node at `events[*i]` under `prefix`, and moves past it.
    fn node(&mut self, events: &[(Event<'_>, Span)], i: &mut usize, prefix: &str) {
        let Some((event, _)) = events.get(*i) else {
            return;
        };
        *i += 1;
        let join = |key: &str| {
            if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            }
        };
        match event {
            Event::MappingStart(..) => {
                while let Some((event, span)) = events.get(*i) {
                    match event {
                        Event::MappingEnd => {
                            *i += 1;
                            return;
                        }
                        Event::Scalar(key, ..) => {
                            *i += 1;
                            let key = join(key);
                            self.record(&key, span);
                            self.node(events, i, &key);
                        }
                        // A complex key (a map or list as a key): its keys and value are kept
                        // under the map's own path.
                        _ => {
                            self.node(events, i, prefix);
                            self.node(events, i, prefix);
                        }
                    }
                }
            }
            Event::SequenceStart(..) => {
                let mut index = 0usize;
                while let Some((event, span)) = events.get(*i) {
                    if matches!(event, Event::SequenceEnd) {
                        *i += 1;
                        return;
                    }
                    let key = join(&index.to_string());
                    self.record(&key, span);
                    self.node(events, i, &key);
                    index += 1;
                }
            }
            _ => {}
        }
    }

    fn record(&mut self, key: &str, span: &Span) {
        self.keys
            .entry(key.to_owned())
            .or_insert((span.start.line(), span.start.col() + 1));
    }

    /// Where `key` was written: the key itself, else (ignoring case) the same key, else its
    /// nearest written parent.
    pub(super) fn find(&self, key: &str) -> Option<Origin> {
        let at = |(line, column): (usize, usize)| Origin::File {
            path: self.path.clone(),
            line,
            column,
        };
        if let Some(pos) = self.keys.get(key) {
            return Some(at(*pos));
        }
        let mut best: Option<(&str, (usize, usize))> = None;
        for (written, pos) in &self.keys {
            if written.eq_ignore_ascii_case(key) {
                return Some(at(*pos));
            }
            if is_under(key, written) && best.is_none_or(|(b, _)| b.len() < written.len()) {
                best = Some((written, *pos));
            }
        }
        best.map(|(_, pos)| at(pos))
    }
}

/// The `OPENIM_GATEWAY_*` variable that sets `key` (or a key under it), as it is set.
pub(super) fn env_var_for(key: &str) -> Option<String> {
    let mut under = None;
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .map(|_| &name[ENV_PREFIX.len()..])
        else {
            continue;
        };
        let dotted = rest.replace("__", ".");
        if dotted.eq_ignore_ascii_case(key) {
            return Some(name.to_owned());
        }
        if is_under(&dotted, key) {
            under.get_or_insert_with(|| name.to_owned());
        }
    }
    under
}

/// Whether the dotted `key` lies below `parent` (ignoring case, as environment keys arrive).
fn is_under(key: &str, parent: &str) -> bool {
    !parent.is_empty()
        && key
            .get(..parent.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(parent))
        && key.as_bytes().get(parent.len()) == Some(&b'.')
}

/// A figment error kind in words: what was expected, with an example, and the
/// nearest valid key or value.
pub(super) fn problem(kind: &Kind) -> String {
    match kind {
        Kind::UnknownField(field, expected) => {
            let mut text = format!("`{field}` is not a known key here");
            match nearest(field, expected) {
                Some(near) => text.push_str(&format!("; did you mean `{near}`?")),
                None => text.push_str(&format!("; the keys here are {}", list(expected))),
            }
            text
        }
        Kind::UnknownVariant(value, expected) => {
            let mut text = format!("`{value}` is not one of {}", list(expected));
            if let Some(near) = nearest(value, expected) {
                text.push_str(&format!("; did you mean `{near}`?"));
            }
            text
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!(
                "expected {}, found {}",
                expectation(expected),
                found(actual)
            )
        }
        Kind::MissingField(field) => format!("the key `{field}` is missing"),
        Kind::DuplicateField(field) => format!("the key `{field}` is given twice"),
        Kind::InvalidLength(len, expected) => {
            format!("expected {}, found {len} items", expectation(expected))
        }
        Kind::ISizeOutOfRange(v) => format!("{v} is out of range"),
        Kind::USizeOutOfRange(v) => format!("{v} is out of range"),
        Kind::Unsupported(actual) => format!("{} is not supported here", found(actual)),
        Kind::UnsupportedKey(actual, _) => format!("{} cannot be a key", found(actual)),
        Kind::Message(text) => message(text),
    }
}

/// A serde expectation (`u32`, `a duration`) as an operator reads it, with an example.
fn expectation(expected: &str) -> String {
    let integer = ["u8", "u16", "u32", "u64", "u128", "usize"];
    let signed = ["i8", "i16", "i32", "i64", "i128", "isize"];
    if integer.contains(&expected) {
        "a whole number such as 5".into()
    } else if signed.contains(&expected) {
        "a whole number such as 20001".into()
    } else if expected == "f32" || expected == "f64" {
        "a number such as 0.5".into()
    } else if expected.contains("duration") {
        "a duration such as 800ms or 3s".into()
    } else if expected.contains("bool") {
        "true or false".into()
    } else if expected.contains("socket address") {
        "an address with a port, such as 127.0.0.1:10006".into()
    } else if expected.contains("sequence") {
        "a list, such as [a, b]".into()
    } else if expected.contains("string") || expected.contains("path") {
        "a text value".into()
    } else if expected.starts_with("struct ") || expected.contains("map") {
        "a map of keys (`key: value` lines indented below it)".into()
    } else {
        expected.to_owned()
    }
}

/// What was found, as written.
fn found(actual: &Actual) -> String {
    match actual {
        Actual::Str(s) => format!("\"{s}\""),
        Actual::Unsigned(v) => v.to_string(),
        Actual::Signed(v) => v.to_string(),
        Actual::Float(v) => v.to_string(),
        Actual::Bool(v) => v.to_string(),
        Actual::Seq => "a list".into(),
        Actual::Map => "a map".into(),
        Actual::Unit | Actual::Option => "nothing".into(),
        other => other.to_string(),
    }
}

/// A free-form message from a deserializer, without serde_yaml's position (ours replaces it).
fn message(text: &str) -> String {
    text.split(" at line ").next().unwrap_or(text).to_owned()
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
pub(super) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&word, &c.to_ascii_lowercase()), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_path_with_their_line_and_column() {
        let text = "listen: 0.0.0.0:1\ndefaults:\n  timout: 3s\nupstreams:\n  default: {endpoints: ['http://a:1', 'http://b:2']}\ncommands:\n  - x\n";
        let p = Positions::parse(text, None).expect("valid YAML");
        let pos = |k: &str| match p.find(k) {
            Some(Origin::File { line, column, .. }) => Some((line, column)),
            _ => None,
        };
        assert_eq!(pos("listen"), Some((1, 1)));
        assert_eq!(pos("defaults.timout"), Some((3, 3)));
        assert_eq!(pos("upstreams.default.endpoints"), Some((5, 13)));
        assert_eq!(pos("upstreams.default.endpoints.1"), Some((5, 39)));
        // Not written: its nearest written parent.
        assert_eq!(pos("upstreams.default.breaker.enabled"), Some((5, 3)));
        assert_eq!(pos("commands.0"), Some((7, 5)));
        assert_eq!(pos("nope"), None);
    }

    #[test]
    fn a_syntax_error_has_its_position() {
        let err = Positions::parse("defaults:\n  timeout: 3s\n bad: [\n", None)
            .expect_err("not YAML")
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("not valid YAML"), "{err}");
    }

    #[test]
    fn nearest_finds_typos_only() {
        let keys = ["enabled", "upstream", "timeout", "on_failure"];
        assert_eq!(nearest("timout", &keys), Some("timeout"));
        assert_eq!(nearest("upstraem", &keys), Some("upstream"));
        assert_eq!(nearest("colour", &keys), None);
    }
}
