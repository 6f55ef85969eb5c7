//! SDP (RFC 8866) model and the offer/answer rewrite (RFC 3264) that anchors media on
//! the relay.
//!
//! Why our own parser: the crates on crates.io (`webrtc-sdp`, `sdp`, `sdp-rs`) parse
//! into typed structs and serialise canonically. They drop or reorder what they do not
//! know and do not remember whether each line ended in CRLF or LF, so they cannot give
//! back the bytes they were given. A B2BUA must pass through everything it does not
//! deliberately rewrite, byte for byte, so the model here is simply the list of lines
//! (type letter, raw value bytes, line ending) and every rewrite edits single lines.
//!
//! The crate is pure: no I/O, no clock, no tokio.

mod anchor;
mod parse;

use std::net::IpAddr;

use smallvec::SmallVec;

pub use parse::parse;

/// A line's value. Inline up to 48 bytes, which holds nearly every SDP line: the offer
/// and the answer of each call are parsed and rewritten line by line, and a heap
/// allocation per line was a sixth of the node's allocations per call.
type Value = SmallVec<[u8; 48]>;

/// How one line ended in the input, kept so that serialising gives back the same
/// bytes (peers mix CRLF and bare LF, and the last line may have no ending at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    CrLf,
    Lf,
    None,
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Eol::CrLf => b"\r\n",
            Eol::Lf => b"\n",
            Eol::None => b"",
        }
    }
}

/// One `<type>=<value>` line. The value is kept as raw bytes: RFC 8866 allows any
/// byte but NUL, CR and LF in many values (and the charset attribute may make them
/// non-UTF-8), and we must give them back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    kind: u8,
    value: Value,
    eol: Eol,
}

/// A parsed session description: every line in input order, so that unknown lines
/// and attributes survive and [`Sdp::to_bytes`] is byte-identical to the input until
/// a rewrite changes it. Build one with [`parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sdp {
    lines: Vec<Line>,
    /// Blank line endings after the last line (some stacks append an extra CRLF);
    /// only CR LF / LF sequences, kept so the round trip stays exact.
    trailer: Vec<u8>,
}

/// Media direction (RFC 3264 §5.1, §8.4), which the relay needs to know to tell a hold
/// from a normal stream; the attributes themselves are always passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv`, or no direction attribute at all.
    SendRecv,
    /// `a=sendonly`: the sender puts the far side on hold.
    SendOnly,
    /// `a=recvonly`: the answer to a `sendonly` hold.
    RecvOnly,
    /// `a=inactive`: no media either way.
    Inactive,
}

/// What the media relay needs to know about one `m=` line to allocate and program
/// ports for it, read from the lines without changing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Position of the m-line (0-based), which is how plans refer to it.
    pub index: usize,
    /// Media type: `audio`, `video`, `application`, ...
    pub kind: String,
    /// Transport port of the m-line; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// The `/<number of ports>` suffix of the port, if any.
    pub port_count: Option<u16>,
    /// Transport protocol: `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...
    pub proto: String,
    /// Media formats (payload types for RTP), in order.
    pub formats: Vec<String>,
    /// Media-level `c=` else session-level `c=`; `None` if neither (or the address is
    /// not an IP literal).
    pub connection: Option<IpAddr>,
    /// The effective `c=` is `0.0.0.0`: the old (RFC 2543) style of putting a stream on
    /// hold, which the rewrite preserves.
    pub hold_zero_address: bool,
    /// `a=rtcp:<port> [IN IP4|IP6 <addr>]` (RFC 3605), when present and readable.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// `a=rtcp-mux` (RFC 5761) is present.
    pub rtcp_mux: bool,
    /// Media-level direction attribute, else session-level, else `SendRecv`.
    pub direction: Direction,
    /// Any ICE attribute (candidates, credentials, options) at media or session level.
    pub has_ice: bool,
    /// Port 0: the stream was rejected (answer) or disabled (offer).
    pub rejected: bool,
}

/// The relay's side of one stream: where the far end must now send media for m-line
/// `index`. Built by the media relay from its port allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlan {
    /// The m-line (0-based) this plan rewrites.
    pub index: usize,
    /// Relay address written into `c=` (and `o=`, `a=rtcp` where asked).
    pub address: IpAddr,
    /// Relay RTP port written into the m-line.
    pub rtp_port: u16,
    /// Relay RTCP port written into `a=rtcp` (equal to `rtp_port` when muxed).
    pub rtcp_port: u16,
    /// Whether the relay muxes RTP and RTCP on this leg: `a=rtcp-mux` is kept (and
    /// added if missing) when true, removed when false.
    pub rtcp_mux: bool,
}

/// Switches for [`Sdp::anchor`]; the defaults are what an SBC that hides the far
/// network wants (and what rtpengine does by default where they overlap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorOptions {
    /// Pass ICE attributes through instead of removing them. Off by default: the
    /// candidates name addresses the relay hides, and the relay does not do ICE.
    pub keep_ice: bool,
    /// Write the relay address into `o=`, so the far side's address does not leak.
    pub replace_origin: bool,
    /// Write the relay address into a session-level `c=` (never over a `0.0.0.0` hold).
    pub replace_session_connection: bool,
    /// Add `a=rtcp:<rtcp_port>` to every rewritten stream that lacks one, as rtpengine
    /// does (also for muxed streams, where the port equals the RTP port), so the far
    /// side never has to guess RTCP = RTP + 1.
    pub add_rtcp_attribute: bool,
}

impl Default for AnchorOptions {
    fn default() -> Self {
        AnchorOptions {
            keep_ice: false,
            replace_origin: true,
            replace_session_connection: true,
            add_rtcp_attribute: true,
        }
    }
}

/// Why a body is not SDP we accept. Every variant that concerns one line names it
/// (1-based), so the SIP layer can log it and answer 400/488 with a useful reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is empty.
    #[error("SDP body is empty")]
    Empty,
    /// The first line is not `v=0`.
    #[error("SDP line 1: must be v=0")]
    NotSdp,
    /// A line breaks the grammar or the structure; `reason` says how.
    #[error("SDP line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No `o=` line in the session part.
    #[error("SDP has no o= line")]
    MissingOrigin,
    /// No `s=` line in the session part.
    #[error("SDP has no s= line")]
    MissingSessionName,
}

impl Sdp {
    /// The wire form: byte-identical to what [`parse`] was given, until a rewrite.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = self.lines.iter().map(|l| l.value.len() + 4).sum::<usize>() + self.trailer.len();
        let mut out = Vec::with_capacity(len);
        for l in &self.lines {
            out.push(l.kind);
            out.push(b'=');
            out.extend_from_slice(&l.value);
            out.extend_from_slice(l.eol.bytes());
        }
        out.extend_from_slice(&self.trailer);
        out
    }

    /// The `o=` session version, which RFC 3264 §8 requires to grow by one with every
    /// changed offer or answer. `None` if it does not fit a `u64` (it is only digits).
    pub fn origin_version(&self) -> Option<u64> {
        let o = self.origin_line()?;
        let spans = parse::tokens(&o.value);
        let (s, e) = *spans.get(2)?;
        std::str::from_utf8(&o.value[s..e]).ok()?.parse().ok()
    }

    /// One entry per m-line, in order, for the relay to plan ports from.
    pub fn media(&self) -> Vec<MediaInfo> {
        anchor::media(self)
    }

    /// Rewrites the description so that media flows through the relay. `plans[i]`
    /// applies to m-line `plans[i].index`; m-lines with port 0 (rejected) and m-lines
    /// without a plan stay as they are (a plan for a rejected or missing m-line is
    /// ignored; of two plans for one m-line the first wins). For each planned m-line:
    /// the port becomes `rtp_port`; a media-level `c=` is written (or replaced) with
    /// `address`, except when the stream was on hold with `c=0.0.0.0` (old-style hold),
    /// which stays so the far side still sees the hold; an existing `a=rtcp` gets
    /// `rtcp_port` (and the relay address if it named one), or one is added when
    /// `opts.add_rtcp_attribute`; `a=rtcp-mux` is kept (or added) when `rtcp_mux`,
    /// removed otherwise; ICE attributes are removed unless `opts.keep_ice`; everything
    /// else, direction attributes included, is kept in order. Session-level ICE
    /// attributes are removed likewise; a session-level `c=` takes the relay address when
    /// `opts.replace_session_connection` (unless it is `0.0.0.0`) and `o=` does when
    /// `opts.replace_origin` — both use the plan of the lowest planned m-line.
    ///
    /// Returns whether anything changed; if so the `o=` version has been incremented
    /// exactly once (RFC 3264 §8), so anchoring an already anchored description (a
    /// re-offer with the same ports) returns false and keeps the version.
    pub fn anchor(&mut self, plans: &[MediaPlan], opts: &AnchorOptions) -> bool {
        anchor::anchor(self, plans, opts)
    }

    /// Increments the `o=` session version by one, for callers that change the body
    /// in other ways. Works on the decimal digits, so it never overflows (a version
    /// past `u64::MAX` just gains a digit).
    pub fn bump_version(&mut self) {
        let Some(o) = self.lines.iter_mut().find(|l| l.kind == b'o') else {
            return;
        };
        let spans = parse::tokens(&o.value);
        let Some(&(s, e)) = spans.get(2) else {
            return;
        };
        let mut digits: Value = Value::from_slice(&o.value[s..e]);
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
        let mut value = Value::from_slice(&o.value[..s]);
        value.extend_from_slice(&digits);
        value.extend_from_slice(&o.value[e..]);
        o.value = value;
    }

    fn origin_line(&self) -> Option<&Line> {
        self.lines.iter().find(|l| l.kind == b'o')
    }
}
