//! Errors in log fields with their whole cause chain: library errors (aya's, the
//! symbolizer's) keep the cause as a `source()` instead of repeating it in their message.
use std::{error::Error, fmt};

/// Displays `error: cause: cause…`.
pub struct Chain<'a>(&'a (dyn Error + 'static));

/// `error = %chain(&e)` in a tracing macro.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_follow_the_message() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = symbolizer::Error::Io {
            path: "/x".into(),
            source: io,
        };
        let text = chain(&e).to_string();
        assert!(text.starts_with("cannot read /x: "), "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
