//! `log`: the format, the level filter, and the access log.

use serde::{Deserialize, Serialize};

use super::values::{Checked, Rule};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub(crate) format: LogFormat,
    pub level: String,
    pub(crate) access: bool,
}

impl LogConfig {
    /// This section without the keys a reload applies (`level` through the
    /// filter's handle, `access` per request): what is left, the format, is set
    /// up once. A key added to the section counts here until it is listed as
    /// reloadable.
    pub(super) fn fixed_at_start(&self) -> LogConfig {
        LogConfig {
            level: String::new(),
            access: false,
            ..self.clone()
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    format: LogFormat,
    level: Checked<LogLevel>,
    access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Pretty,
            level: Checked::new("info"),
            access: true,
        }
    }
}

impl RawLog {
    /// Every check of this section is in its values' types.
    pub(super) fn validate(&self) -> LogConfig {
        LogConfig {
            format: self.format.clone(),
            level: self.level.text.clone(),
            access: self.access,
        }
    }
}

/// `log.level`: a level name, or a filter whose every directive names its level
/// with `=` (a bare word would be read as a target name, and `infoo` would
/// silence every line).
enum LogLevel {}

impl Rule for LogLevel {
    fn accepts(value: &str) -> bool {
        is_log_level(value)
    }
    fn refusal(value: &str) -> String {
        format!(
            "`{value}` is not a level: expected error, warn, info, debug, trace, \
             or a filter with `=` such as `info,sessiongate=debug`"
        )
    }
}

fn is_log_level(value: &str) -> bool {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let value = value.trim();
    if LEVELS.iter().any(|l| value.eq_ignore_ascii_case(l)) {
        return true;
    }
    value.contains('=')
        && tracing_subscriber::EnvFilter::try_new(value).is_ok()
        && value.split(',').all(|directive| {
            let directive = directive.trim();
            LEVELS.iter().any(|l| directive.eq_ignore_ascii_case(l))
                || directive.rsplit_once('=').is_some_and(|(_, level)| {
                    LEVELS
                        .iter()
                        .chain(&["off"])
                        .any(|l| level.trim().eq_ignore_ascii_case(l))
                })
        })
}
