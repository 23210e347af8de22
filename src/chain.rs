//! An error and its causes on one line (`outer: inner: innermost`), for messages
//! that must stand alone: a log field, a config error. Below every module that
//! reports an error, so any of them may use it.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by `: `.
pub struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_follows_on_one_line() {
        let e = Outer(std::io::Error::other("innermost"));
        assert_eq!(Chain(&e).to_string(), "outer: innermost");
    }
}
