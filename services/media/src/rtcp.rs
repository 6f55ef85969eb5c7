//! RTCP compound-packet parsing (RFC 3550 §6.4): sender and receiver reports with
//! their report blocks, and round-trip time from LSR/DLSR (§6.4.1).
//!
//! Sans-IO: the caller passes `now` as the middle 32 bits of an NTP timestamp.

/// RTCP packet type of a sender report.
pub const PT_SR: u8 = 200;
/// RTCP packet type of a receiver report.
pub const PT_RR: u8 = 201;

/// Why a datagram is not a well-formed RTCP compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Fewer than 4 bytes left where a packet header should start.
    #[error("RTCP packet too short")]
    TooShort,
    /// Version bits are not 2.
    #[error("RTCP version {0} is not 2")]
    BadVersion(u8),
    /// The length field runs past the datagram.
    #[error("RTCP length field runs past the datagram")]
    Truncated,
    /// An SR/RR announces more report blocks than its length holds.
    #[error("RTCP report count does not fit the packet length")]
    BadReportCount,
    /// The first packet of a compound is neither SR nor RR (RFC 3550 §6.1).
    #[error("RTCP compound packet does not start with SR or RR (type {0})")]
    NotReportFirst(u8),
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from `ssrc` (0: none).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

/// Sender information of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// Full 64-bit NTP timestamp.
    pub ntp: u64,
    /// RTP timestamp matching `ntp`.
    pub rtp_timestamp: u32,
    /// Packets sent.
    pub packet_count: u32,
    /// Payload octets sent.
    pub octet_count: u32,
}

impl SenderInfo {
    /// The middle 32 bits of the NTP timestamp, which receivers echo as LSR.
    pub fn ntp_middle(&self) -> u32 {
        // Truncation is the definition of the middle 32 bits.
        ((self.ntp >> 16) & 0xffff_ffff) as u32
    }
}

/// One SR or RR from a compound packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// SSRC of the packet's sender.
    pub ssrc: u32,
    /// Present for SR, absent for RR.
    pub sender: Option<SenderInfo>,
    /// Reception report blocks.
    pub blocks: Vec<ReportBlock>,
}

/// What the relay reads out of one compound packet; other packet types are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compound {
    /// SRs and RRs in order.
    pub reports: Vec<Report>,
    /// Number of packets (of any type) in the compound.
    pub packets: usize,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_block(b: &[u8]) -> ReportBlock {
    let raw = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    ReportBlock {
        ssrc: be32(b, 0),
        fraction_lost: b[4],
        // Sign-extend the low 24 bits.
        cumulative_lost: (raw << 8) >> 8,
        highest_seq: be32(b, 8),
        jitter: be32(b, 12),
        lsr: be32(b, 16),
        dlsr: be32(b, 20),
    }
}

/// One SR or RR borrowed from a datagram: its report blocks are decoded as they are
/// iterated, so reading a report allocates nothing (the forwarding workers read every
/// RTCP packet they relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRef<'a> {
    /// SSRC of the packet's sender.
    pub ssrc: u32,
    /// Present for SR, absent for RR.
    pub sender: Option<SenderInfo>,
    /// The report blocks, 24 bytes each.
    blocks: &'a [u8],
}

impl<'a> ReportRef<'a> {
    /// The reception report blocks, in packet order.
    pub fn blocks(&self) -> impl ExactSizeIterator<Item = ReportBlock> + 'a {
        self.blocks.chunks_exact(24).map(parse_block)
    }

    /// An owned copy.
    pub fn to_report(&self) -> Report {
        Report {
            ssrc: self.ssrc,
            sender: self.sender,
            blocks: self.blocks().collect(),
        }
    }
}

/// A compound packet that passed [`validate_compound`]: walking it again cannot fail,
/// and neither validation nor the walk allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompoundRef<'a> {
    datagram: &'a [u8],
    /// Number of packets (of any type) in the compound.
    pub packets: usize,
}

impl<'a> CompoundRef<'a> {
    /// The SRs and RRs in order; other packet types are skipped.
    pub fn reports(&self) -> impl Iterator<Item = ReportRef<'a>> + 'a {
        let mut rest = self.datagram;
        std::iter::from_fn(move || {
            // Validated already: `next_packet` only fails at the end.
            while let Some((pkt, tail)) = next_packet(rest).ok().flatten() {
                rest = tail;
                if let Some(report) = pkt.report() {
                    return Some(report);
                }
            }
            None
        })
    }
}

/// One packet of a compound, its header read and its report count checked.
#[derive(Clone, Copy)]
struct Packet<'a> {
    /// The whole packet, header included.
    bytes: &'a [u8],
    /// Report count (RC) from the header.
    count: usize,
    /// Packet type.
    pt: u8,
}

impl<'a> Packet<'a> {
    /// The SR or RR it is; `None` for other types.
    fn report(&self) -> Option<ReportRef<'a>> {
        let (pkt, pt) = (self.bytes, self.pt);
        if pt != PT_SR && pt != PT_RR {
            return None;
        }
        let head = report_head(pt);
        let sender = (pt == PT_SR).then(|| SenderInfo {
            ntp: (u64::from(be32(pkt, 8)) << 32) | u64::from(be32(pkt, 12)),
            rtp_timestamp: be32(pkt, 16),
            packet_count: be32(pkt, 20),
            octet_count: be32(pkt, 24),
        });
        Some(ReportRef {
            ssrc: be32(pkt, 4),
            sender,
            blocks: pkt.get(head..head + self.count * 24)?,
        })
    }
}

/// Splits the first packet off `rest`, returning it and what follows; `None` when `rest`
/// is empty.
fn next_packet(rest: &[u8]) -> Result<Option<(Packet<'_>, &[u8])>, RtcpError> {
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < 4 {
        return Err(RtcpError::TooShort);
    }
    let version = rest[0] >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    let count = usize::from(rest[0] & 0x1f);
    let pt = rest[1];
    let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
    let bytes = rest.get(..len).ok_or(RtcpError::Truncated)?;
    if (pt == PT_SR || pt == PT_RR) && bytes.len() < report_head(pt) + count * 24 {
        return Err(RtcpError::BadReportCount);
    }
    Ok(Some((Packet { bytes, count, pt }, &rest[len..])))
}

/// Bytes before the first report block: header + SSRC, plus sender info for an SR.
fn report_head(pt: u8) -> usize {
    if pt == PT_SR {
        28
    } else {
        8
    }
}

/// Checks a whole compound RTCP packet, walking every packet by its length field, so a
/// malformed datagram is refused before any of it is used. `strict` demands an SR or
/// RR first, as RFC 3550 §6.1 does; reduced-size RTCP (RFC 5506) needs it off.
pub fn validate_compound(datagram: &[u8], strict: bool) -> Result<CompoundRef<'_>, RtcpError> {
    if datagram.is_empty() {
        return Err(RtcpError::TooShort);
    }
    let mut rest = datagram;
    let mut packets = 0;
    while let Some((pkt, tail)) = next_packet(rest)? {
        if strict && packets == 0 && pkt.pt != PT_SR && pkt.pt != PT_RR {
            return Err(RtcpError::NotReportFirst(pkt.pt));
        }
        packets += 1;
        rest = tail;
    }
    Ok(CompoundRef { datagram, packets })
}

/// Parses a compound RTCP packet into owned reports ([`validate_compound`] plus a copy);
/// for tests, tools and fuzzing — the relay itself reads the borrowed form.
pub fn parse_compound(datagram: &[u8], strict: bool) -> Result<Compound, RtcpError> {
    let c = validate_compound(datagram, strict)?;
    Ok(Compound {
        reports: c.reports().map(|r| r.to_report()).collect(),
        packets: c.packets,
    })
}

/// The report block about the media a party receives from the other one: the block whose
/// source is the newest of `sources` (SSRCs the other party sent, newest first), else the
/// first block. A report holds a block per source its sender hears — several after an SSRC
/// change or behind a mixer — and only the one about the relayed stream describes this leg.
pub fn pick_block(
    blocks: impl IntoIterator<Item = ReportBlock>,
    sources: &[u32],
) -> Option<ReportBlock> {
    let mut first = None;
    let mut best: Option<(usize, ReportBlock)> = None;
    for block in blocks {
        first.get_or_insert(block);
        if let Some(rank) = sources.iter().position(|s| *s == block.ssrc) {
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, block));
            }
        }
    }
    best.map(|(_, b)| b).or(first)
}

/// Round-trip time in milliseconds from a report block's LSR/DLSR, with `now` the
/// arrival time of the report as the middle 32 bits of an NTP timestamp on the same
/// clock as LSR (RFC 3550 §6.4.1: RTT = A − LSR − DLSR). `None` when no SR was
/// echoed (LSR 0) or the result is negative (clock mismatch, stale report).
pub fn rtt_ms(now: u32, lsr: u32, dlsr: u32) -> Option<f64> {
    if lsr == 0 {
        return None;
    }
    let elapsed = now.wrapping_sub(lsr);
    // More than half the 32-bit range back means `now` is before LSR: not a valid RTT.
    if elapsed > u32::MAX / 2 || dlsr > elapsed {
        return None;
    }
    Some(f64::from(elapsed - dlsr) * 1000.0 / 65536.0)
}

/// Converts a duration since some epoch to the middle 32 bits of an NTP-style timestamp
/// (seconds in the high 16 bits, 1/65536 s in the low 16), the unit of LSR/DLSR.
pub fn ntp_middle_from(d: std::time::Duration) -> u32 {
    let secs = (d.as_secs() & 0xffff) as u32;
    let frac = (u64::from(d.subsec_nanos()) * 65536 / 1_000_000_000) as u32;
    (secs << 16) | frac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(ssrc: u32, blocks: &[ReportBlock]) -> Vec<u8> {
        let words = 1 + blocks.len() * 6;
        let mut p = vec![0x80 | blocks.len() as u8, PT_RR];
        p.extend_from_slice(&(words as u16).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for b in blocks {
            p.extend_from_slice(&b.ssrc.to_be_bytes());
            let cum = (b.cumulative_lost as u32) & 0x00ff_ffff;
            p.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | cum).to_be_bytes());
            for v in [b.highest_seq, b.jitter, b.lsr, b.dlsr] {
                p.extend_from_slice(&v.to_be_bytes());
            }
        }
        p
    }

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0x1111,
            fraction_lost: 64,
            cumulative_lost: -3,
            highest_seq: 70000,
            jitter: 160,
            lsr: 0x0001_8000,
            dlsr: 0x0000_4000,
        }
    }

    #[test]
    fn parses_rr_with_block_and_sdes() {
        let mut p = rr(0x2222, &[block()]);
        // SDES with one chunk: SSRC + CNAME "ab" + end, padded to 4.
        p.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0x22, 0x22, 1, 2, b'a', b'b']);
        let c = parse_compound(&p, true).unwrap();
        assert_eq!(c.packets, 2);
        assert_eq!(c.reports.len(), 1);
        assert_eq!(c.reports[0].ssrc, 0x2222);
        assert_eq!(c.reports[0].blocks, vec![block()]);
        assert!(c.reports[0].sender.is_none());
    }

    #[test]
    fn parses_sr() {
        let mut p = vec![0x80, PT_SR, 0, 6];
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&0x0000_1234_5678_9abcu64.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
        let c = parse_compound(&p, true).unwrap();
        let s = c.reports[0].sender.unwrap();
        assert_eq!(s.ntp_middle(), 0x1234_5678);
        assert_eq!((s.rtp_timestamp, s.packet_count, s.octet_count), (1, 2, 3));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_compound(&[], true), Err(RtcpError::TooShort));
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 0], true),
            Err(RtcpError::BadVersion(1))
        );
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 5, 0, 0, 0, 0], true),
            Err(RtcpError::Truncated)
        );
        // RC 1 but no room for the block.
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 0], true),
            Err(RtcpError::BadReportCount)
        );
        let bye = [0x81, 203, 0, 1, 0, 0, 0, 9];
        assert_eq!(
            parse_compound(&bye, true),
            Err(RtcpError::NotReportFirst(203))
        );
        assert_eq!(parse_compound(&bye, false).unwrap().packets, 1);
        let mut p = rr(1, &[]);
        p.extend_from_slice(&[0x80, 201]);
        assert_eq!(parse_compound(&p, true), Err(RtcpError::TooShort));
    }

    #[test]
    fn rtt_from_lsr_dlsr() {
        // SR sent at 1.5 s, report held 0.25 s, arrives at 2.0 s: RTT 250 ms.
        let rtt = rtt_ms(0x0002_0000, 0x0001_8000, 0x0000_4000).unwrap();
        assert!((rtt - 250.0).abs() < 0.01);
        assert_eq!(rtt_ms(0x0002_0000, 0, 0), None);
        assert_eq!(rtt_ms(0x0001_0000, 0x0001_8000, 0), None);
        assert_eq!(rtt_ms(0x0002_0000, 0x0001_8000, 0x0001_0000), None);
        // Across the 16-bit seconds wrap.
        let rtt = rtt_ms(0x0000_0100, 0xffff_ff00, 0).unwrap();
        assert!((rtt - 512.0 * 1000.0 / 65536.0).abs() < 0.01);
    }

    #[test]
    fn ntp_middle_units() {
        let d = std::time::Duration::from_millis(1500);
        assert_eq!(ntp_middle_from(d), 0x0001_8000);
    }

    fn block_about(ssrc: u32, fraction_lost: u8) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost,
            ..block()
        }
    }

    #[test]
    fn reads_every_block_of_full_and_chained_reports() {
        // 31 blocks (the most a 5-bit count holds), then a second RR for the sources
        // that did not fit, then an SR with none: one compound.
        let first: Vec<ReportBlock> = (0..31).map(|i| block_about(100 + i, i as u8)).collect();
        let second: Vec<ReportBlock> = (0..3).map(|i| block_about(200 + i, 0)).collect();
        let mut p = rr(7, &first);
        p.extend(rr(7, &second));
        let mut sr = vec![0x80, PT_SR, 0, 6];
        sr.extend_from_slice(&8u32.to_be_bytes());
        sr.extend_from_slice(&[0; 20]);
        p.extend(sr);

        let c = validate_compound(&p, true).unwrap();
        assert_eq!(c.packets, 3);
        let reports: Vec<ReportRef<'_>> = c.reports().collect();
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[0].blocks().len(), 31);
        assert!(reports[0].blocks().eq(first.iter().copied()));
        assert!(reports[1].blocks().eq(second.iter().copied()));
        assert_eq!(reports[2].blocks().len(), 0);
        assert_eq!(reports[2].ssrc, 8);
        assert!(reports[2].sender.is_some());
        // The owned form says the same.
        let owned = parse_compound(&p, true).unwrap();
        assert_eq!(owned.reports[0].blocks, first);
        assert_eq!(owned.reports[1].blocks, second);
        assert_eq!(owned.reports.len(), 3);
        // A length one block short of the count is refused before anything is read.
        let mut bad = p.clone();
        bad[3] -= 6;
        assert_eq!(
            validate_compound(&bad, true),
            Err(RtcpError::BadReportCount)
        );
    }

    #[test]
    fn picks_the_block_about_the_newest_known_source() {
        let blocks = [block_about(9, 1), block_about(5, 2), block_about(6, 3)];
        // Newest first: 6 is the current source, 5 an earlier one.
        assert_eq!(pick_block(blocks, &[6, 5]).map(|b| b.ssrc), Some(6));
        assert_eq!(pick_block(blocks, &[7, 5]).map(|b| b.ssrc), Some(5));
        // No source known, or none reported on: the first block.
        assert_eq!(pick_block(blocks, &[]).map(|b| b.ssrc), Some(9));
        assert_eq!(pick_block(blocks, &[42]).map(|b| b.ssrc), Some(9));
        assert_eq!(pick_block([], &[6]), None);
    }
}
