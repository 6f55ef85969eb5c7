//! SIP request methods.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A request method. Methods are case-sensitive (RFC 3261 §7.1): `invite` is an
/// extension method, not INVITE, so unknown spellings are kept as `Extension`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Prack,
    Subscribe,
    Notify,
    Publish,
    Info,
    Refer,
    Message,
    Update,
    Extension(String),
}

impl Method {
    /// Parses a method token; `None` when the bytes are not an RFC 3261 token.
    pub fn from_token(b: &[u8]) -> Option<Method> {
        if b.is_empty() || !b.iter().all(|c| crate::scan::is_token_char(*c)) {
            return None;
        }
        Some(match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"PUBLISH" => Method::Publish,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"UPDATE" => Method::Update,
            other => Method::Extension(String::from_utf8_lossy(other).into_owned()),
        })
    }

    /// The wire name of a standard method; `None` for extension methods.
    fn standard_name(&self) -> Option<&'static str> {
        Some(match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Update => "UPDATE",
            Method::Extension(_) => return None,
        })
    }

    /// The method as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Extension(s) => s,
            m => m.standard_name().unwrap_or_default(),
        }
    }

    /// A label safe for metrics: extension methods collapse to "OTHER" so a peer
    /// cannot grow the label set without bound.
    pub fn metric_label(&self) -> &'static str {
        self.standard_name().unwrap_or("OTHER")
    }

    /// Wire form as shared bytes, for building messages.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_str().as_bytes())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
