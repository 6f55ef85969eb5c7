//! Why a message could not be parsed.

use thiserror::Error;

/// A parse failure. Each variant maps to a short, stable `reason()` string so metrics
/// and logs can count failures by cause without formatting the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("message has no end of headers (CRLFCRLF)")]
    Incomplete,
    #[error("empty message")]
    Empty,
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    #[error("malformed request-URI: {0}")]
    Uri(&'static str),
    #[error("malformed header line")]
    HeaderLine,
    #[error("invalid character in header name")]
    HeaderName,
    #[error("malformed Content-Length")]
    ContentLength,
    #[error("Content-Length {declared} larger than the {available} bytes received")]
    BodyTruncated { declared: usize, available: usize },
    #[error("malformed {header} header: {what}")]
    Header {
        header: &'static str,
        what: &'static str,
    },
    #[error("invalid UTF-8 or control character where text is required")]
    Text,
}

impl ParseError {
    /// Short snake_case cause, stable across releases: used as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Incomplete => "incomplete",
            ParseError::Empty => "empty",
            ParseError::StartLine(_) => "start_line",
            ParseError::Uri(_) => "uri",
            ParseError::HeaderLine => "header_line",
            ParseError::HeaderName => "header_name",
            ParseError::ContentLength => "content_length",
            ParseError::BodyTruncated { .. } => "body_truncated",
            ParseError::Header { .. } => "header_value",
            ParseError::Text => "text",
        }
    }
}
