//! The file being read: parsing it into the raw sections with located errors, and
//! [`Source`], which locates a key for the checks made after parsing and resolves
//! the file paths the configuration names.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML or a value does not fit its key.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
}

/// The configuration text and the file it came from.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a Path,
}

impl Source<'_> {
    /// Parses the text; an error names the line, the column and the dotted key of
    /// the value the parser (or the value's own type) refused.
    pub(super) fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let options = serde_saphyr::options! { with_snippet: false };
        let mut key_path = String::new();
        let result =
            serde_saphyr::with_deserializer_from_str_with_options(self.text, options, |de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    key_path = e.path().to_string();
                    e.into_inner()
                })
            });
        result.map_err(|err| {
            let (line, column) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let message = strip_location(&err.without_snippet().to_string());
            let (key, message) = name_the_key(&key_path, message);
            ConfigError::Invalid {
                path: self.origin.to_owned(),
                line,
                column,
                key,
                message,
            }
        })
    }

    /// An error at `key` for a check made after parsing (one that spans keys, or
    /// reads a file).
    pub(super) fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.find(key);
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// A path from the config file: a relative one is taken from the file's
    /// directory, not from wherever the proxy was started.
    pub(super) fn path(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match self.origin.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// A line-based search: follows the dotted path through indentation levels and
    /// into list items (`routes[2].login_url`). Good enough for block-style YAML;
    /// flow style falls back to the nearest parent found.
    fn find(&self, key: &str) -> (u64, u64) {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut best = (1, 1);
        // Where the search goes on: the first line to look at, the indent a
        // line must exceed to stay inside the parent, and a list item's first
        // key, which shares the line of its dash.
        let mut from = 0;
        let mut parent_indent: Option<usize> = None;
        let mut item_line: Option<(usize, usize, &str)> = None;
        for part in key.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let wanted = format!("{name}:");
            let mut found = None;
            if let Some((no, indent, body)) = item_line.take() {
                if body.starts_with(&wanted) {
                    found = Some((no, indent));
                }
            }
            if found.is_none() {
                for (no, line) in lines.iter().enumerate().skip(from) {
                    let indent = line.len() - line.trim_start().len();
                    let body = line.trim_start();
                    if body.is_empty() || body.starts_with('#') {
                        continue;
                    }
                    if parent_indent.is_some_and(|p| indent <= p) {
                        break;
                    }
                    if body.starts_with(&wanted) {
                        found = Some((no, indent));
                        break;
                    }
                }
            }
            let Some((no, indent)) = found else { break };
            best = (no as u64 + 1, indent as u64 + 1);
            parent_indent = Some(indent);
            from = no + 1;
            let Some(index) = index else { continue };
            // The list's items: dashes at one indent, no shallower than the key's.
            let mut dash_indent = None;
            let mut count = 0;
            let mut item = None;
            for (no, line) in lines.iter().enumerate().skip(from) {
                let indent = line.len() - line.trim_start().len();
                let body = line.trim_start();
                if body.is_empty() || body.starts_with('#') {
                    continue;
                }
                let dash = body == "-" || body.starts_with("- ");
                if indent < parent_indent.unwrap_or(0)
                    || (indent == parent_indent.unwrap_or(0) && !dash)
                {
                    break;
                }
                if dash && dash_indent.is_none_or(|d| d == indent) {
                    dash_indent = Some(indent);
                    if count == index {
                        item = Some((no, indent, body));
                        break;
                    }
                    count += 1;
                }
            }
            let Some((no, indent, body)) = item else {
                break;
            };
            best = (no as u64 + 1, indent as u64 + 1);
            parent_indent = Some(indent);
            from = no + 1;
            let first = body.trim_start_matches('-').trim_start();
            item_line = Some((no, indent + (body.len() - first.len()), first));
        }
        best
    }
}

/// The key an error is about, and its message. The parser names a repeated key in
/// its message, not in the path.
fn name_the_key(path: &str, message: String) -> (String, String) {
    let key = if path.is_empty() || path == "." {
        "(document)".to_owned()
    } else {
        path.to_owned()
    };
    let Some(rest) = message.strip_prefix("duplicate mapping key: ") else {
        return (key, message);
    };
    let name = rest.split(',').next().unwrap_or(rest).trim().to_owned();
    let parent = key.trim_end_matches('?').trim_end_matches('.');
    let key = if parent.is_empty() || parent == "(document)" {
        name
    } else {
        format!("{parent}.{name}")
    };
    (key, "duplicate key: each key may appear once".to_owned())
}

/// The YAML parser appends " at line L column C"; the error already carries both.
fn strip_location(msg: &str) -> String {
    let trimmed = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    trimmed.trim().to_owned()
}
