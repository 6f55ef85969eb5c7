//! RTP fixed-header parsing (RFC 3550 §5.1) and sequence-number tracking for loss
//! (RFC 3550 appendix A.1).
//!
//! Sans-IO: bytes in, values out. The relay forwards every datagram it accepts whether
//! or not it parses; parsing only feeds statistics, so a parse error is never fatal.

/// Size of the fixed RTP header (without CSRCs or extension).
pub const FIXED_HEADER_LEN: usize = 12;

/// Why a datagram is not a well-formed RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet shorter than the fixed header ({0} bytes)")]
    TooShort(usize),
    /// The version bits are not 2.
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    /// CSRC list or header extension run past the end of the packet.
    #[error("RTP header (CSRCs/extension) runs past the end of the packet")]
    Truncated,
    /// The padding count is zero or larger than the payload.
    #[error("RTP padding length is invalid")]
    BadPadding,
}

/// The parts of an RTP header the relay uses; the payload is `packet[payload_offset..payload_offset + payload_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Number of CSRC identifiers.
    pub csrc_count: u8,
    /// Whether a header extension is present.
    pub extension: bool,
    /// Offset of the payload from the start of the packet.
    pub payload_offset: usize,
    /// Payload length with padding removed.
    pub payload_len: usize,
    /// Padding bytes at the end (0 when the P bit is clear).
    pub padding: usize,
}

/// Parses the RTP header of `packet`, checking that CSRCs, extension and padding fit.
pub fn parse_header(packet: &[u8]) -> Result<RtpHeader, RtpError> {
    if packet.len() < FIXED_HEADER_LEN {
        return Err(RtpError::TooShort(packet.len()));
    }
    let b0 = packet[0];
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let has_padding = b0 & 0x20 != 0;
    let extension = b0 & 0x10 != 0;
    let csrc_count = b0 & 0x0f;
    let b1 = packet[1];
    let sequence = u16::from_be_bytes([packet[2], packet[3]]);
    let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    let mut offset = FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
    if offset > packet.len() {
        return Err(RtpError::Truncated);
    }
    if extension {
        let ext = packet.get(offset..offset + 4).ok_or(RtpError::Truncated)?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        offset += 4 + 4 * words;
        if offset > packet.len() {
            return Err(RtpError::Truncated);
        }
    }
    let mut padding = 0;
    if has_padding {
        let last = packet.last().copied().ok_or(RtpError::BadPadding)?;
        padding = usize::from(last);
        if padding == 0 || offset + padding > packet.len() {
            return Err(RtpError::BadPadding);
        }
    }
    Ok(RtpHeader {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7f,
        sequence,
        timestamp,
        ssrc,
        csrc_count,
        extension,
        payload_offset: offset,
        payload_len: packet.len() - offset - padding,
        padding,
    })
}

/// Whether a datagram on an rtcp-mux port is RTCP rather than RTP (RFC 5761 §4:
/// the second byte of RTCP is a packet type in 192..=223, which RTP payload types avoid).
pub fn looks_like_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (192..=223).contains(&packet[1])
}

/// A jump this large (forwards or backwards) is treated as a restarted sender, not loss.
const MAX_DROPOUT: u16 = 3000;
/// Backwards jumps up to this size are reordered/duplicate packets.
const MAX_MISORDER: u16 = 100;

/// Tracks one RTP source's sequence numbers to estimate packet loss (RFC 3550 A.1,
/// without the probation phase: the relay sees the stream from its first packet).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    ssrc: Option<u32>,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    /// Loss accumulated from sources (SSRCs) seen before the current one.
    lost_before: u64,
}

impl SeqTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one packet's SSRC and sequence number.
    pub fn update(&mut self, ssrc: u32, seq: u16) {
        if self.ssrc != Some(ssrc) {
            self.lost_before += self.current_lost();
            self.restart(ssrc, seq);
            return;
        }
        let delta = seq.wrapping_sub(self.max_seq);
        if delta == 0 {
            // duplicate of the newest packet
        } else if delta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += 1;
            }
            self.max_seq = seq;
        } else if delta <= u16::MAX - MAX_MISORDER {
            // A huge jump: the sender restarted its sequence. Keep what was lost so far.
            self.lost_before += self.current_lost();
            self.restart(ssrc, seq);
            return;
        }
        // else: late or reordered packet; it still counts as received.
        self.received += 1;
    }

    fn restart(&mut self, ssrc: u32, seq: u16) {
        self.ssrc = Some(ssrc);
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.cycles = 0;
        self.received = 1;
    }

    /// The SSRC being tracked, if any packet was seen.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Highest sequence number seen and how often the numbers wrapped: where a tracker
    /// that takes over the source (the kernel fast path) starts.
    pub fn position(&self) -> (u16, u32) {
        (self.max_seq, self.cycles)
    }

    /// Takes over what another tracker of the same source saw since it started from
    /// [`position`](Self::position): its highest sequence number and wrap count, and how
    /// many packets it received. For another SSRC it does nothing (that tracker's packets
    /// went elsewhere).
    pub fn absorb(&mut self, ssrc: u32, max_seq: u16, cycles: u32, received: u64) {
        if self.ssrc != Some(ssrc) {
            return;
        }
        let theirs = (u64::from(cycles) << 16) | u64::from(max_seq);
        if theirs > self.extended_max() {
            self.max_seq = max_seq;
            self.cycles = cycles;
        }
        self.received += received;
    }

    /// Highest sequence number seen, extended with the wrap-around count.
    pub fn extended_max(&self) -> u64 {
        (u64::from(self.cycles) << 16) | u64::from(self.max_seq)
    }

    fn current_lost(&self) -> u64 {
        if self.ssrc.is_none() {
            return 0;
        }
        let expected = self.extended_max() + 1 - u64::from(self.base_seq);
        expected.saturating_sub(self.received)
    }

    /// Packets expected but never seen, over all sources this tracker followed.
    /// Duplicates can make `received` exceed `expected`; loss then reads 0, never negative.
    pub fn lost(&self) -> u64 {
        self.lost_before + self.current_lost()
    }

    /// Packets counted for the current source.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// How many of a party's recent SSRCs are remembered.
pub const SSRC_HISTORY: usize = 4;

/// The last few SSRCs one party sent RTP with, newest first. Reports from the other
/// party name the source they describe by SSRC; after a change (a new call leg behind a
/// B2BUA, a restarted sender) they may still describe the old one for a while.
///
/// Fixed size and `Copy`: updated for every RTP packet without allocating, and a packet
/// with the newest SSRC (nearly all of them) costs one comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SsrcHistory {
    ids: [u32; SSRC_HISTORY],
    len: usize,
}

impl SsrcHistory {
    /// Records that a packet with `ssrc` arrived.
    pub fn note(&mut self, ssrc: u32) {
        if self.len > 0 && self.ids[0] == ssrc {
            return;
        }
        // Move it (or, when new, the oldest entry's slot) to the front.
        let seen = self.ids[..self.len].iter().position(|s| *s == ssrc);
        let end = match seen {
            Some(p) => p,
            None => {
                self.len = (self.len + 1).min(SSRC_HISTORY);
                self.len - 1
            }
        };
        self.ids[..=end].rotate_right(1);
        self.ids[0] = ssrc;
    }

    /// The remembered SSRCs, newest first.
    pub fn newest_first(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// The SSRC of the last packet, if any.
    pub fn latest(&self) -> Option<u32> {
        self.newest_first().first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, cc: u8, ext_words: Option<u16>, pad: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80 | cc, 0x80 | 8];
        if ext_words.is_some() {
            p[0] |= 0x10;
        }
        if pad > 0 {
            p[0] |= 0x20;
        }
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        for i in 0..cc {
            p.extend_from_slice(&u32::from(i).to_be_bytes());
        }
        if let Some(w) = ext_words {
            p.extend_from_slice(&[0xbe, 0xde]);
            p.extend_from_slice(&w.to_be_bytes());
            p.extend(std::iter::repeat_n(0u8, usize::from(w) * 4));
        }
        p.extend_from_slice(payload);
        if pad > 0 {
            p.extend(std::iter::repeat_n(0u8, usize::from(pad) - 1));
            p.push(pad);
        }
        p
    }

    #[test]
    fn parses_plain_header() {
        let p = packet(7, 0, None, 0, b"hello");
        let h = parse_header(&p).unwrap();
        assert_eq!(h.sequence, 7);
        assert_eq!(h.timestamp, 1234);
        assert_eq!(h.ssrc, 0xdead_beef);
        assert_eq!(h.payload_type, 8);
        assert!(h.marker);
        assert_eq!(
            &p[h.payload_offset..h.payload_offset + h.payload_len],
            b"hello"
        );
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let p = packet(1, 3, Some(2), 4, b"xyz");
        let h = parse_header(&p).unwrap();
        assert_eq!(h.csrc_count, 3);
        assert!(h.extension);
        assert_eq!(h.padding, 4);
        assert_eq!(h.payload_offset, 12 + 12 + 4 + 8);
        assert_eq!(
            &p[h.payload_offset..h.payload_offset + h.payload_len],
            b"xyz"
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(parse_header(&[0x80; 11]), Err(RtpError::TooShort(11)));
        let mut p = packet(1, 0, None, 0, b"x");
        p[0] = 0x40;
        assert_eq!(parse_header(&p), Err(RtpError::BadVersion(1)));
        let mut p = packet(1, 0, None, 0, b"");
        p[0] |= 0x0f; // 15 CSRCs that are not there
        assert_eq!(parse_header(&p), Err(RtpError::Truncated));
        let mut p = packet(1, 0, Some(1), 0, b"");
        p.truncate(p.len() - 2);
        assert_eq!(parse_header(&p), Err(RtpError::Truncated));
        let mut p = packet(1, 0, None, 0, b"ab");
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 0;
        assert_eq!(parse_header(&p), Err(RtpError::BadPadding));
        *p.last_mut().unwrap() = 200;
        assert_eq!(parse_header(&p), Err(RtpError::BadPadding));
    }

    #[test]
    fn rtcp_demux_rule() {
        assert!(looks_like_rtcp(&[0x81, 201, 0, 7, 0, 0, 0, 1]));
        assert!(!looks_like_rtcp(&packet(1, 0, None, 0, b"x")));
        assert!(!looks_like_rtcp(&[0x81, 201, 0]));
    }

    #[test]
    fn counts_loss() {
        let mut t = SeqTracker::new();
        for s in [10u16, 11, 12, 14, 15, 18] {
            t.update(1, s);
        }
        assert_eq!(t.lost(), 3);
        assert_eq!(t.received(), 6);
    }

    #[test]
    fn sequence_wraps() {
        let mut t = SeqTracker::new();
        for s in [65533u16, 65534, 65535, 0, 2, 3] {
            t.update(1, s);
        }
        assert_eq!(t.extended_max(), 65536 + 3);
        assert_eq!(t.lost(), 1);
    }

    #[test]
    fn reordering_and_duplicates_are_not_loss() {
        let mut t = SeqTracker::new();
        for s in [100u16, 102, 101, 103, 103] {
            t.update(1, s);
        }
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn new_ssrc_or_big_jump_restarts_keeping_past_loss() {
        let mut t = SeqTracker::new();
        for s in [1u16, 3] {
            t.update(1, s);
        }
        assert_eq!(t.lost(), 1);
        t.update(2, 500);
        t.update(2, 501);
        assert_eq!(t.lost(), 1);
        t.update(2, 30000);
        t.update(2, 30002);
        assert_eq!(t.lost(), 2);
    }

    #[test]
    fn ssrc_history_keeps_the_newest_first_and_forgets_the_oldest() {
        let mut h = SsrcHistory::default();
        assert_eq!(h.latest(), None);
        assert!(h.newest_first().is_empty());
        for s in [1, 1, 2, 2, 2] {
            h.note(s);
        }
        assert_eq!(h.newest_first(), &[2, 1]);
        // An old SSRC coming back moves to the front without a duplicate.
        h.note(1);
        assert_eq!(h.newest_first(), &[1, 2]);
        for s in [3, 4, 5] {
            h.note(s);
        }
        assert_eq!(h.newest_first(), &[5, 4, 3, 1]);
        h.note(3);
        assert_eq!(h.newest_first(), &[3, 5, 4, 1]);
        h.note(6);
        assert_eq!(h.newest_first(), &[6, 3, 5, 4]);
        assert_eq!(h.latest(), Some(6));
    }

    #[test]
    fn absorbs_what_a_tracker_of_the_same_source_saw() {
        let mut t = SeqTracker::new();
        for seq in [65530, 65531, 65532] {
            t.update(7, seq);
        }
        assert_eq!(t.position(), (65532, 0));
        // Another tracker took over at 65532 and received 1, 2 and 4 after the wrap:
        // 65533, 65534, 65535, 0 and 3 never came.
        t.absorb(7, 4, 1, 3);
        assert_eq!(t.extended_max(), (1 << 16) | 4);
        assert_eq!(t.lost(), 5);
        // A different source's counts are not this one's.
        t.absorb(8, 9, 1, 5);
        assert_eq!(t.extended_max(), (1 << 16) | 4);
        assert_eq!(t.lost(), 5);
    }
}
