//! `trunkline-sip`: the sans-IO SIP core.
//!
//! Everything here is pure: bytes and `now` in, messages and deadlines out. The parser
//! slices the received `Bytes` without copying; `validate` applies RFC 3261 §8.2 and
//! RFC 4475 rules; `transaction` holds the RFC 3261 §17 state machines and `dialog`
//! the §12 dialog state. No sockets, clocks or runtimes, so every rule is a unit test.

pub mod addr;
pub mod dialog;
pub mod digest;
pub mod error;
pub mod header;
pub mod message;
pub mod method;
pub mod name_addr;
pub mod params;
pub mod parse;
pub mod scan;
pub mod tags;
pub mod text;
pub mod transaction;
pub mod uri;
pub mod validate;
pub mod via;

pub use addr::{Peer, Transport};
pub use dialog::Dialog;
pub use error::ParseError;
pub use header::{Header, HeaderName, Headers};
pub use message::{reason_phrase, CSeq, Message, Request, Response};
pub use method::Method;
pub use name_addr::NameAddr;
pub use params::{Param, Params};
pub use parse::{parse_message, salvage};
pub use uri::{Host, SipScheme, SipUri, Uri};
pub use validate::{rejection_response, validate_request, validate_response, Policy, Rejection};
pub use via::{Via, ViaRef, MAGIC_COOKIE};
