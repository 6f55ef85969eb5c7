//! ng message framing (`cookie SP dictionary`) and the typed request the dispatcher runs.
//!
//! Key and flag names are matched the way rtpengine matches them: `-`, `_` and space are
//! interchangeable (rtpengine "hyphenates" both), and we also ignore ASCII case, so
//! `trust-address`, `trust address` and `Trust_Address` are one flag.

use super::bencode::{self, BencodeError};
use crate::{AddressFamily, AddressPolicy, EndpointLearning, Flags};
use serde_bencode::value::Value;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Longest cookie accepted. Kamailio's are `pid_counter`; OpenSIPS' similar.
pub const MAX_COOKIE: usize = 256;

/// Why a message could not be turned into a [`Request`]. `Display` is the `error-reason`
/// rtpengine would send for the same input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NgError {
    /// No space-separated cookie: nothing to reply to, the message is dropped.
    #[error("Received invalid NG data (no cookie)")]
    NoCookie,
    /// Empty body after the cookie.
    #[error("Invalid data (no payload)")]
    NoPayload,
    /// Body is neither a bencode dictionary nor (unsupported here) JSON.
    #[error("Invalid NG data format")]
    Format,
    /// JSON bodies are part of ng but not implemented by this relay.
    #[error("JSON ng messages are not supported")]
    Json,
    /// Malformed bencode or not a dictionary.
    #[error("Could not decode bencode dictionary")]
    Decode(#[source] Option<BencodeError>),
    /// No `command` key.
    #[error("Dictionary contains no key \"command\"")]
    NoCommand,
}

/// Splits `cookie SP body`. The cookie must be non-empty and at most [`MAX_COOKIE`] bytes.
pub fn split(msg: &[u8]) -> Result<(&[u8], &[u8]), NgError> {
    let space = msg
        .iter()
        .take(MAX_COOKIE + 1)
        .position(|&b| b == b' ')
        .ok_or(NgError::NoCookie)?;
    if space == 0 {
        return Err(NgError::NoCookie);
    }
    Ok((&msg[..space], &msg[space + 1..]))
}

/// Frames a reply: the request's cookie, a space, the bencoded dictionary.
pub fn frame_reply(cookie: &[u8], reply: &Value) -> Result<Vec<u8>, BencodeError> {
    let body = bencode::encode(reply)?;
    let mut out = Vec::with_capacity(cookie.len() + 1 + body.len());
    out.extend_from_slice(cookie);
    out.push(b' ');
    out.extend_from_slice(&body);
    Ok(out)
}

/// The ng commands this relay runs, plus the rest of rtpengine's vocabulary so a known but
/// unimplemented command gets a precise error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Liveness check; Kamailio marks the instance up on `pong`.
    Ping,
    /// SDP offer.
    Offer,
    /// SDP answer.
    Answer,
    /// End a call.
    Delete,
    /// Stats of one call.
    Query,
    /// Active Call-IDs.
    List,
    /// Relay-wide statistics.
    Statistics,
    /// An rtpengine command we recognise but do not implement (recording, DTMF, media…).
    Unsupported(String),
    /// Not an ng command at all.
    Unknown(String),
}

const UNSUPPORTED: &[&str] = &[
    "start recording",
    "stop recording",
    "pause recording",
    "block dtmf",
    "unblock dtmf",
    "block media",
    "unblock media",
    "silence media",
    "unsilence media",
    "start forwarding",
    "stop forwarding",
    "play media",
    "stop media",
    "play dtmf",
    "publish",
    "subscribe request",
    "subscribe answer",
    "unsubscribe",
    "inject start",
    "inject stop",
    "connect",
    "create",
    "create answer",
    "mesh",
];

/// Request keys that change media handling in rtpengine but not here: warned about, so an
/// operator relying on them sees it in the proxy's log instead of silently different SDP.
const UNSUPPORTED_KEYS: &[&str] = &[
    "codec",
    "sdes",
    "dtls",
    "dtls fingerprint",
    "osrtp",
    "media address",
    "record call",
    "t.38",
    "ptime",
    "ptime reverse",
    "ice lite",
    "media echo",
    "drop traffic",
    "interface",
    "output destination",
    "xmlrpc callback",
];

impl Command {
    fn parse(raw: &str) -> Command {
        match normalize(raw).as_str() {
            "ping" => Command::Ping,
            "offer" => Command::Offer,
            "answer" => Command::Answer,
            "delete" => Command::Delete,
            "query" => Command::Query,
            "list" => Command::List,
            "statistics" => Command::Statistics,
            n if UNSUPPORTED.contains(&n) => Command::Unsupported(raw.to_owned()),
            _ => Command::Unknown(raw.to_owned()),
        }
    }
}

/// One ng request, with everything this relay understands pulled out and typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// `call-id`.
    pub call_id: Option<String>,
    /// `from-tag`.
    pub from_tag: Option<String>,
    /// `to-tag`.
    pub to_tag: Option<String>,
    /// `via-branch` (logged; branches are not modelled separately).
    pub via_branch: Option<String>,
    /// `sdp`.
    pub sdp: Option<Vec<u8>>,
    /// Media behaviour from keys and flags. `address` starts as rtpengine's default (SDP
    /// addresses are trusted); see [`Request::address_trust`].
    pub flags: Flags,
    /// `trust address` (Some(true)) or `SIP source address` (Some(false)) if given; when
    /// absent the relay's `--sip-source` setting decides.
    pub address_trust: Option<bool>,
    /// `delete` flag `fatal`: unknown call is an error, not a warning.
    pub fatal: bool,
    /// `delete` flag `fast`: no stats in the reply.
    pub fast: bool,
    /// `delete` flag `to-tag`: honour the to-tag (rtpengine ignores it otherwise).
    pub honour_to_tag: bool,
    /// `list` key `limit`.
    pub limit: Option<i64>,
    /// Things ignored, for the reply's `warning`.
    pub warnings: Vec<String>,
}

/// Lowercase, with `-` and `_` turned into spaces: rtpengine's matching, case-insensitive.
fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '-' | '_' => ' ',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// A key's value as a list of strings; a bare string counts as a one-element list (rtpengine
/// accepts both for `flags`, `ICE`, `replace`, `rtcp-mux`). Non-strings are skipped.
fn str_items(v: &Value) -> Vec<String> {
    match v {
        Value::Bytes(_) => as_str(v).map(|s| vec![s.to_owned()]).unwrap_or_default(),
        Value::List(items) => items.iter().filter_map(as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

impl Request {
    /// Parses the body after the cookie.
    pub fn parse(body: &[u8]) -> Result<Request, NgError> {
        match body.first() {
            None => return Err(NgError::NoPayload),
            Some(b'd') => {}
            Some(b'{') => return Err(NgError::Json),
            Some(_) => return Err(NgError::Format),
        }
        let Value::Dict(raw) = bencode::decode(body).map_err(|e| NgError::Decode(Some(e)))? else {
            return Err(NgError::Decode(None));
        };
        Self::from_dict(&raw)
    }

    /// Builds a request from a decoded dictionary.
    pub fn from_dict(raw: &HashMap<Vec<u8>, Value>) -> Result<Request, NgError> {
        // Normalised key → value; keys that are not UTF-8 cannot be ours and are skipped.
        let dict: HashMap<String, &Value> = raw
            .iter()
            .filter_map(|(k, v)| std::str::from_utf8(k).ok().map(|k| (normalize(k), v)))
            .collect();
        let get_str = |k: &str| dict.get(k).and_then(|v| as_str(v)).map(str::to_owned);

        let command = Command::parse(&get_str("command").ok_or(NgError::NoCommand)?);
        let mut req = Request {
            command,
            call_id: get_str("call id"),
            from_tag: get_str("from tag"),
            to_tag: get_str("to tag"),
            via_branch: get_str("via branch"),
            sdp: match dict.get("sdp") {
                Some(Value::Bytes(b)) => Some(b.clone()),
                _ => None,
            },
            flags: Flags {
                address: AddressPolicy::Sdp,
                ..Flags::default()
            },
            address_trust: None,
            fatal: false,
            fast: false,
            honour_to_tag: false,
            limit: match dict.get("limit") {
                Some(Value::Int(i)) => Some(*i),
                Some(v) => as_str(v).and_then(|s| s.trim().parse().ok()),
                None => None,
            },
            warnings: Vec::new(),
        };

        if let Some(v) = dict.get("flags") {
            for flag in str_items(v) {
                req.apply_flag(&flag);
            }
        }
        if let Some(v) = dict.get("replace") {
            for item in str_items(v) {
                req.apply_replace(&item);
            }
        }
        if let Some(v) = dict.get("ice") {
            for item in str_items(v) {
                req.apply_ice(&item);
            }
        }
        if let Some(v) = dict.get("rtcp mux") {
            for item in str_items(v) {
                req.apply_rtcp_mux(&item);
            }
        }
        if let Some(v) = dict.get("received from") {
            req.apply_received_from(v);
        }
        if let Some(v) = dict.get("direction") {
            req.apply_direction(v);
        }
        // rtpengine: the same as the first / second `direction` item.
        for (key, i) in [("from interface", 0), ("to interface", 1)] {
            if let Some(name) = get_str(key) {
                req.flags.direction[i] = Some(name).filter(|n| !n.is_empty());
            }
        }
        if let Some(mode) = get_str("endpoint learning") {
            req.apply_endpoint_learning(&mode);
        }
        if let Some(family) = get_str("address family") {
            match AddressFamily::parse(family.trim()) {
                Some(f) => req.flags.address_family = Some(f),
                None => req
                    .warnings
                    .push(format!("address family {family} not supported; ignored")),
            }
        }
        let mut unsupported: Vec<&str> = UNSUPPORTED_KEYS
            .iter()
            .copied()
            .filter(|k| dict.contains_key(*k))
            .collect();
        unsupported.sort_unstable();
        for key in unsupported {
            req.warnings.push(format!("{key} not supported; ignored"));
        }
        if let Some(proto) = get_str("transport protocol") {
            // We relay RTP as it comes; only plain RTP/AVP (or "accept") needs no translation.
            if !matches!(proto.to_ascii_uppercase().as_str(), "RTP/AVP" | "ACCEPT") {
                req.warnings.push(format!(
                    "transport protocol {proto} not supported; SDP protocol kept"
                ));
            }
        }
        Ok(req)
    }

    fn apply_flag(&mut self, raw: &str) {
        let n = normalize(raw);
        let f = &mut self.flags;
        match n.as_str() {
            "trust address" => {
                f.address = AddressPolicy::Sdp;
                self.address_trust = Some(true);
            }
            "sip source address" => {
                f.address = AddressPolicy::Source;
                self.address_trust = Some(false);
            }
            "symmetric" => {
                f.symmetric = true;
                f.asymmetric = false;
            }
            "asymmetric" => {
                f.asymmetric = true;
                f.symmetric = false;
            }
            "strict source" => f.strict_source = true,
            "media handover" => f.media_handover = true,
            "port latching" => f.port_latching = true,
            "no port latching" => f.port_latching = false,
            "fatal" => self.fatal = true,
            "fast" => self.fast = true,
            "to tag" => self.honour_to_tag = true,
            _ => {
                // rtpengine also takes `replace-origin`, `rtcp-mux-demux`, `ICE=remove`… as flags.
                if let Some(rest) = n.strip_prefix("replace ") {
                    self.apply_replace(rest);
                } else if let Some(rest) = n.strip_prefix("rtcp mux ") {
                    self.apply_rtcp_mux(rest);
                } else if let Some(rest) = n.strip_prefix("ice=") {
                    self.apply_ice(rest);
                } else if let Some(rest) = n.strip_prefix("endpoint learning ") {
                    self.apply_endpoint_learning(rest);
                } else {
                    self.warnings.push(format!("Unknown flag ignored: {raw}"));
                }
            }
        }
    }

    fn apply_replace(&mut self, raw: &str) {
        match normalize(raw).as_str() {
            "origin" => self.flags.replace_origin = true,
            "session connection" => self.flags.replace_session_connection = true,
            _ => self
                .warnings
                .push(format!("replace {raw} not supported; ignored")),
        }
    }

    fn apply_ice(&mut self, raw: &str) {
        match normalize(raw).as_str() {
            "remove" | "default" => self.flags.keep_ice = false,
            "pass" => self.flags.keep_ice = true,
            _ => {
                self.flags.keep_ice = false;
                self.warnings
                    .push(format!("ICE {raw} not supported; ICE attributes removed"));
            }
        }
    }

    fn apply_rtcp_mux(&mut self, raw: &str) {
        match normalize(raw).as_str() {
            "offer" => self.flags.rtcp_mux_offer = true,
            "demux" => self.flags.rtcp_mux_demux = true,
            // Going along with the client's choice is what the engine does anyway.
            "accept" => {}
            _ => self
                .warnings
                .push(format!("rtcp-mux {raw} not supported; ignored")),
        }
    }

    /// `endpoint-learning` (key, or flag with that prefix): how this party's source is
    /// learnt, overriding `--endpoint-learning`.
    fn apply_endpoint_learning(&mut self, raw: &str) {
        match EndpointLearning::parse(raw) {
            Some(mode) => self.flags.endpoint_learning = Some(mode),
            None => self
                .warnings
                .push(format!("endpoint-learning {raw} not supported; ignored")),
        }
    }

    /// `direction`: the interface facing the sender of this message, then the one facing its
    /// receiver. rtpengine takes the first two items and ignores the rest; an empty item
    /// leaves that side to the default. Whether the names exist is the dispatcher's question.
    fn apply_direction(&mut self, v: &Value) {
        let items = str_items(v);
        if items.len() > 2 {
            self.warnings
                .push("direction lists more than two interfaces; the rest ignored".into());
        }
        for (slot, name) in self.flags.direction.iter_mut().zip(items) {
            *slot = Some(name).filter(|n| !n.is_empty());
        }
    }

    /// `received from`: `["IP4", "192.0.2.1"]` → 192.0.2.1:0.
    fn apply_received_from(&mut self, v: &Value) {
        let items = str_items(v);
        let parsed = match items.as_slice() {
            [family, addr] => addr.trim().parse::<IpAddr>().ok().filter(|ip| {
                matches!(
                    (family.to_ascii_uppercase().as_str(), ip),
                    ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_))
                )
            }),
            _ => None,
        };
        match parsed {
            Some(ip) => self.flags.received_from = Some(SocketAddr::new(ip, 0)),
            None => self
                .warnings
                .push("received from is not [IP4|IP6, address]; ignored".into()),
        }
    }
}
