//! Bencode for the ng protocol: a bounded structural scan in front of `serde_bencode`.
//!
//! Decoding and encoding of values is `serde_bencode`'s (`Value`: byte strings, integers,
//! nested lists and dictionaries — everything ng uses). We do not use `bendy`: it enforces
//! canonical (sorted) dictionary keys and rejects what Kamailio's module and rtpengine itself
//! send (the ng spec says the sorting rule "is currently not honored").
//!
//! What `serde_bencode` lacks, and this module adds, is [`scan`]: one iterative pass that
//! 1. finds where one bencode value ends, which is how rtpengine frames ng over TCP
//!    (cookie, space, dictionary, and the next message directly after it — see `chunk_message`
//!    and `bencode_valid` in rtpengine's `daemon/control_ng.c`), and
//! 2. bounds nesting depth before the recursive `serde_bencode` decoder runs, so hostile input
//!    like `llll…` cannot overflow the stack (ARCHITECTURE rule 6).

/// The decoded value type (re-exported so users need not depend on `serde_bencode`).
pub use serde_bencode::value::Value;
use std::collections::HashMap;

/// Deepest nesting accepted. Real ng messages nest 3–4 levels (`codec` → `transcode` → list).
pub const MAX_DEPTH: usize = 32;

/// Longest decimal string accepted for a length or an integer (i64 fits in 20 characters).
const MAX_DIGITS: usize = 20;

/// Why a buffer is not one well-formed bencode value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    /// A byte that cannot start or continue a value at this position.
    #[error("unexpected byte {byte:#04x} at offset {offset}")]
    Unexpected {
        /// The offending byte.
        byte: u8,
        /// Its offset in the buffer.
        offset: usize,
    },
    /// Lists/dictionaries nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A dictionary key that is not a byte string.
    #[error("dictionary key at offset {0} is not a string")]
    NonStringKey(usize),
    /// The buffer ended inside the value.
    #[error("truncated bencode value")]
    Truncated,
    /// Bytes left after the value where none are allowed.
    #[error("{0} trailing bytes after the bencode value")]
    Trailing(usize),
    /// The structural scan accepted it but `serde_bencode` did not (e.g. integer overflow).
    #[error("bencode decode: {0}")]
    Decode(String),
    /// Encoding a reply failed (only possible with values we never build).
    #[error("bencode encode: {0}")]
    Encode(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    List,
    DictKey,
    DictValue,
}

/// Length of the one bencode value at the start of `buf`, or `Ok(None)` if `buf` ends before
/// the value does (read more), or an error if it can never become valid.
///
/// Iterative, no allocation beyond a stack of at most [`MAX_DEPTH`] frames.
pub fn scan(buf: &[u8]) -> Result<Option<usize>, BencodeError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut pos = 0usize;
    // Bounded: every iteration consumes at least one byte or returns.
    loop {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        // Position in a dictionary decides whether a key is required.
        let expecting_key = stack.last() == Some(&Frame::DictKey);
        if b == b'e' {
            match stack.pop() {
                Some(Frame::List) | Some(Frame::DictKey) => {
                    pos += 1;
                    if stack.is_empty() {
                        return Ok(Some(pos));
                    }
                    value_done(&mut stack);
                    continue;
                }
                _ => {
                    return Err(BencodeError::Unexpected {
                        byte: b,
                        offset: pos,
                    })
                }
            }
        }
        if expecting_key && !b.is_ascii_digit() {
            return Err(BencodeError::NonStringKey(pos));
        }
        match b {
            b'l' | b'd' => {
                if stack.len() >= MAX_DEPTH {
                    return Err(BencodeError::TooDeep);
                }
                stack.push(if b == b'l' {
                    Frame::List
                } else {
                    Frame::DictKey
                });
                pos += 1;
                continue;
            }
            b'i' => {
                pos += 1;
                let start = pos;
                if buf.get(pos) == Some(&b'-') {
                    pos += 1;
                }
                let digits_start = pos;
                loop {
                    match buf.get(pos) {
                        None => return Ok(None),
                        Some(d) if d.is_ascii_digit() && pos - start < MAX_DIGITS => pos += 1,
                        Some(b'e') if pos > digits_start => break,
                        Some(&other) => {
                            return Err(BencodeError::Unexpected {
                                byte: other,
                                offset: pos,
                            })
                        }
                    }
                }
                pos += 1; // the 'e'
            }
            b'0'..=b'9' => {
                let mut len: usize = 0;
                let start = pos;
                loop {
                    match buf.get(pos) {
                        None => return Ok(None),
                        Some(d) if d.is_ascii_digit() && pos - start < MAX_DIGITS => {
                            len = len
                                .checked_mul(10)
                                .and_then(|l| l.checked_add(usize::from(d - b'0')))
                                .ok_or(BencodeError::Unexpected {
                                    byte: *d,
                                    offset: pos,
                                })?;
                            pos += 1;
                        }
                        Some(b':') => break,
                        Some(&other) => {
                            return Err(BencodeError::Unexpected {
                                byte: other,
                                offset: pos,
                            })
                        }
                    }
                }
                pos += 1; // the ':'
                match pos.checked_add(len) {
                    Some(end) if end <= buf.len() => pos = end,
                    Some(_) => return Ok(None),
                    None => return Err(BencodeError::Truncated),
                }
            }
            other => {
                return Err(BencodeError::Unexpected {
                    byte: other,
                    offset: pos,
                })
            }
        }
        // An atom just ended.
        if stack.is_empty() {
            return Ok(Some(pos));
        }
        value_done(&mut stack);
    }
}

/// A value inside the top container finished: in a dictionary, alternate key/value.
fn value_done(stack: &mut [Frame]) {
    if let Some(top) = stack.last_mut() {
        *top = match *top {
            Frame::List => Frame::List,
            Frame::DictKey => Frame::DictValue,
            Frame::DictValue => Frame::DictKey,
        };
    }
}

/// Decodes exactly one bencode value filling all of `buf`.
pub fn decode(buf: &[u8]) -> Result<Value, BencodeError> {
    match scan(buf)? {
        None => Err(BencodeError::Truncated),
        Some(n) if n != buf.len() => Err(BencodeError::Trailing(buf.len() - n)),
        // Depth is bounded by the scan, so serde_bencode's recursion is too.
        Some(_) => serde_bencode::from_bytes(buf).map_err(|e| BencodeError::Decode(e.to_string())),
    }
}

/// Encodes a value (dictionary keys come out sorted, which every ng peer accepts).
pub fn encode(value: &Value) -> Result<Vec<u8>, BencodeError> {
    serde_bencode::to_bytes(value).map_err(|e| BencodeError::Encode(e.to_string()))
}

/// Builds reply dictionaries without spelling out `Value` at every key.
#[derive(Debug, Default, Clone)]
pub struct Dict(pub HashMap<Vec<u8>, Value>);

impl Dict {
    /// An empty dictionary.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `key` to a string value.
    pub fn str(mut self, key: &str, val: impl AsRef<[u8]>) -> Self {
        self.0
            .insert(key.as_bytes().to_vec(), Value::Bytes(val.as_ref().to_vec()));
        self
    }
    /// Sets `key` to an integer value (saturating at i64::MAX, which bencode peers parse).
    pub fn int(mut self, key: &str, val: impl TryInto<i64>) -> Self {
        self.0.insert(
            key.as_bytes().to_vec(),
            Value::Int(val.try_into().unwrap_or(i64::MAX)),
        );
        self
    }
    /// Sets `key` to any value.
    pub fn val(mut self, key: &str, val: Value) -> Self {
        self.0.insert(key.as_bytes().to_vec(), val);
        self
    }
    /// Whether `key` is already set.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key.as_bytes())
    }
    /// The finished `Value::Dict`.
    pub fn build(self) -> Value {
        Value::Dict(self.0)
    }
}

/// A list of strings as a `Value`.
pub fn str_list<S: AsRef<[u8]>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::List(
        items
            .into_iter()
            .map(|s| Value::Bytes(s.as_ref().to_vec()))
            .collect(),
    )
}
