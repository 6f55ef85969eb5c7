//! The forwarding program: a tcx ingress classifier that relays an RTP packet inside the
//! kernel when the worker has told it how (a map entry per relay socket), and leaves every
//! other packet to the next program and the socket.
//!
//! For an IPv4/UDP packet without IP options or fragmentation, carrying an RTP version 2
//! header that is not RTCP (RFC 5761 §4 payload types 64–95 are left to the worker, which
//! reads them), it looks up (destination address, destination port). The entry must name
//! this packet's source address and port, the interface it came in on and its SSRC, or the
//! packet goes up to the relay socket as usual, where the worker's latching policy decides
//! (and a new SSRC is seen by the worker's statistics). The sequence number is tracked as
//! the worker's `SeqTracker` does (RFC 3550 A.1): forward steps move the extended highest
//! number, late packets only count, and a jump the worker would treat as a restart goes to
//! the worker. On a match it counts the packet, rewrites source and destination to the entry's (fixing the IP and UDP
//! checksums with the kernel's helpers, which know every `ip_summed` state), and passes it
//! up for local delivery or redirects it out of the outgoing interface with a neighbour
//! lookup.

use super::insn::{Asm, AsmError, Cond, Size, R0, R1, R10, R2, R3, R4, R5, R6, R7, R8, R9};

/// Map key: destination IPv4 address and UDP port as they are on the wire, 2 bytes pad.
pub(crate) const KEY_SIZE: u32 = 8;
/// Map value layout (offsets); addresses and ports in network byte order.
pub(crate) mod value {
    /// Accepted source address [4] and port [2].
    pub(crate) const FROM_ADDR: usize = 0;
    pub(crate) const FROM_PORT: usize = 4;
    /// New source and destination address, in the order of the IP header.
    pub(crate) const NEW_SADDR: usize = 8;
    pub(crate) const NEW_DADDR: usize = 12;
    /// New source and destination port, in the order of the UDP header.
    pub(crate) const NEW_SPORT: usize = 16;
    pub(crate) const NEW_DPORT: usize = 18;
    /// Interface the packet must arrive on (native u32).
    pub(crate) const IN_IFINDEX: usize = 20;
    /// 0: deliver locally; else redirect out of this interface (native u32).
    pub(crate) const OUT_IFINDEX: usize = 24;
    /// Counters the program adds to (native u64): packets, UDP payload bytes, and the
    /// CLOCK_MONOTONIC time of the last packet in nanoseconds.
    pub(crate) const PACKETS: usize = 32;
    pub(crate) const BYTES: usize = 40;
    pub(crate) const LAST_NS: usize = 48;
    /// The SSRC accepted, as on the wire [4].
    pub(crate) const SSRC: usize = 56;
    /// Highest sequence number and its wrap count (native u32 each).
    pub(crate) const MAX_SEQ: usize = 60;
    pub(crate) const CYCLES: usize = 64;
    pub(crate) const SIZE: usize = 72;
}

/// `struct __sk_buff` offsets.
const SKB_LEN: i16 = 0;
const SKB_INGRESS_IFINDEX: i16 = 36;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// Packet offsets: Ethernet (14) + IPv4 without options (20) + UDP (8).
const ETH_PROTO: i16 = 12;
const IP_VER_IHL: i16 = 14;
const IP_FRAG: i16 = 20;
const IP_PROTO: i16 = 23;
const IP_CSUM: i32 = 24;
const IP_SADDR: i16 = 26;
const IP_DADDR: i16 = 30;
const UDP_SPORT: i16 = 34;
const UDP_DPORT: i16 = 36;
const UDP_CSUM: i32 = 40;
const PAYLOAD: i16 = 42;
/// RTP header fields, from the start of the UDP payload.
const RTP_SEQ: i16 = 2;
const RTP_SSRC: i16 = 8;
const RTP_HEADER: i32 = 12;
/// The worker's `SeqTracker` limits (RFC 3550 A.1).
const MAX_DROPOUT: i32 = 3000;
const MAX_MISORDER: i32 = 100;
/// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const KTIME_GET_NS: i32 = 5;
const SKB_STORE_BYTES: i32 = 9;
const L3_CSUM_REPLACE: i32 = 10;
const L4_CSUM_REPLACE: i32 = 11;
const REDIRECT_NEIGH: i32 = 152;
/// Helper flags.
const F_RECOMPUTE_CSUM: i32 = 1;
const F_PSEUDO_HDR: i32 = 1 << 4;
const F_MARK_MANGLED_0: i32 = 1 << 5;
/// Return codes: pass (stop the tcx chain, continue up the stack), next program.
const TC_ACT_OK: i32 = 0;
const TCX_NEXT: i32 = -1;

fn off(v: usize) -> i16 {
    i16::try_from(v).unwrap_or(i16::MAX)
}

/// Assembles the program against map descriptor `map_fd`.
pub(crate) fn forwarder(map_fd: i32) -> Result<Vec<u8>, AsmError> {
    use value::*;
    let mut a = Asm::default();
    // R6 = skb, R2 = data, R3 = data_end; a whole RTP header must be readable.
    a.mov(R6, R1)
        .load(Size::W, R2, R6, SKB_DATA)
        .load(Size::W, R3, R6, SKB_DATA_END)
        .mov(R4, R2)
        .add_imm(R4, i32::from(PAYLOAD) + RTP_HEADER)
        .jump_reg(Cond::Gt, R4, R3, "next");
    // IPv4 (0x0800 read little endian), no options, UDP, neither MF nor an offset.
    a.load(Size::H, R4, R2, ETH_PROTO)
        .jump_imm(Cond::Ne, R4, 0x0008, "next")
        .load(Size::B, R4, R2, IP_VER_IHL)
        .jump_imm(Cond::Ne, R4, 0x45, "next")
        .load(Size::B, R4, R2, IP_PROTO)
        .jump_imm(Cond::Ne, R4, 17, "next")
        .load(Size::H, R4, R2, IP_FRAG)
        .and_imm(R4, 0xff3f)
        .jump_imm(Cond::Ne, R4, 0, "next");
    // RTP version 2, and not an RTCP packet type.
    a.load(Size::B, R4, R2, PAYLOAD)
        .and_imm(R4, 0xc0)
        .jump_imm(Cond::Ne, R4, 0x80, "next")
        .load(Size::B, R4, R2, PAYLOAD + 1)
        .and_imm(R4, 0x7f)
        .jump_imm(Cond::Lt, R4, 64, "rtp")
        .jump_imm(Cond::Le, R4, 95, "next")
        .label("rtp");
    // SSRC (as on the wire) at R10-16 and sequence number (its value) at R10-12, for
    // after the lookup, which invalidates packet pointers.
    a.load(Size::W, R4, R2, PAYLOAD + RTP_SSRC)
        .store(Size::W, R10, -16, R4)
        .load(Size::H, R4, R2, PAYLOAD + RTP_SEQ)
        .be16(R4)
        .store(Size::W, R10, -12, R4);
    // Key on the stack at R10-8: daddr, dport, zero pad. R8/R9 keep saddr/sport.
    a.load(Size::W, R4, R2, IP_DADDR)
        .store(Size::W, R10, -8, R4)
        .load(Size::H, R4, R2, UDP_DPORT)
        .store(Size::W, R10, -4, R4)
        .load(Size::W, R8, R2, IP_SADDR)
        .load(Size::H, R9, R2, UDP_SPORT)
        .load_map_fd(R1, map_fd)
        .mov(R2, R10)
        .add_imm(R2, -8)
        .call(MAP_LOOKUP_ELEM)
        .jump_imm(Cond::Eq, R0, 0, "next")
        .mov(R7, R0);
    // Only the latched source, on the expected interface.
    a.load(Size::W, R1, R7, off(FROM_ADDR))
        .jump_reg(Cond::Ne, R1, R8, "next")
        .load(Size::H, R1, R7, off(FROM_PORT))
        .jump_reg(Cond::Ne, R1, R9, "next")
        .load(Size::W, R1, R6, SKB_INGRESS_IFINDEX)
        .load(Size::W, R2, R7, off(IN_IFINDEX))
        .jump_reg(Cond::Ne, R1, R2, "next")
        .load(Size::W, R1, R10, -16)
        .load(Size::W, R2, R7, off(SSRC))
        .jump_reg(Cond::Ne, R1, R2, "next");
    // Sequence: delta = (seq - max) mod 2^16. 0: a duplicate; below MAX_DROPOUT: forward
    // (a wrap when seq < max); above 2^16 - MAX_MISORDER: late; between: a restart, which
    // the worker handles.
    a.load(Size::W, R1, R10, -12)
        .load(Size::W, R2, R7, off(MAX_SEQ))
        .mov(R3, R1)
        .sub(R3, R2)
        .and_imm(R3, 0xffff)
        .jump_imm(Cond::Eq, R3, 0, "count")
        .jump_imm(Cond::Ge, R3, MAX_DROPOUT, "late")
        .jump_reg(Cond::Ge, R1, R2, "new_max")
        .load(Size::W, R4, R7, off(CYCLES))
        .add_imm(R4, 1)
        .store(Size::W, R7, off(CYCLES), R4)
        .label("new_max")
        .store(Size::W, R7, off(MAX_SEQ), R1)
        .goto("count")
        .label("late")
        .jump_imm(Cond::Le, R3, 0xffff - MAX_MISORDER, "next")
        .label("count");
    // Count: packets, payload bytes, time.
    a.mov_imm(R1, 1)
        .atomic_add64(R7, off(PACKETS), R1)
        .load(Size::W, R1, R6, SKB_LEN)
        .add_imm(R1, -i32::from(PAYLOAD))
        .atomic_add64(R7, off(BYTES), R1)
        .call(KTIME_GET_NS)
        .store(Size::DW, R7, off(LAST_NS), R0);
    // Checksums: addresses change the IP header's and (pseudo header) the UDP one's;
    // ports only the UDP one's. A zero UDP checksum (none) stays zero.
    let l4_addr = F_PSEUDO_HDR | F_MARK_MANGLED_0 | 4;
    let l4_port = F_MARK_MANGLED_0 | 2;
    for (helper, at, old_reg, old_stack, new, size, flags) in [
        (L3_CSUM_REPLACE, IP_CSUM, Some(R8), 0, NEW_SADDR, Size::W, 4),
        (L3_CSUM_REPLACE, IP_CSUM, None, -8, NEW_DADDR, Size::W, 4),
        (
            L4_CSUM_REPLACE,
            UDP_CSUM,
            Some(R8),
            0,
            NEW_SADDR,
            Size::W,
            l4_addr,
        ),
        (
            L4_CSUM_REPLACE,
            UDP_CSUM,
            None,
            -8,
            NEW_DADDR,
            Size::W,
            l4_addr,
        ),
        (
            L4_CSUM_REPLACE,
            UDP_CSUM,
            Some(R9),
            0,
            NEW_SPORT,
            Size::H,
            l4_port,
        ),
        (
            L4_CSUM_REPLACE,
            UDP_CSUM,
            None,
            -4,
            NEW_DPORT,
            Size::H,
            l4_port,
        ),
    ] {
        a.mov(R1, R6).mov_imm(R2, at);
        match old_reg {
            Some(r) => a.mov(R3, r),
            None => a.load(Size::W, R3, R10, old_stack),
        };
        a.load(size, R4, R7, off(new))
            .mov_imm(R5, flags)
            .call(helper);
    }
    // The new addresses, then the new ports, straight from the entry.
    for (at, from, len) in [(IP_SADDR, NEW_SADDR, 8), (UDP_SPORT, NEW_SPORT, 4)] {
        a.mov(R1, R6)
            .mov_imm(R2, i32::from(at))
            .mov(R3, R7)
            .add_imm(R3, i32::from(off(from)))
            .mov_imm(R4, len)
            .mov_imm(R5, F_RECOMPUTE_CSUM)
            .call(SKB_STORE_BYTES);
    }
    // Out: up the stack, or out of another interface via its neighbour table.
    a.load(Size::W, R1, R7, off(OUT_IFINDEX))
        .jump_imm(Cond::Eq, R1, 0, "up")
        .mov_imm(R2, 0)
        .mov_imm(R3, 0)
        .mov_imm(R4, 0)
        .call(REDIRECT_NEIGH)
        .exit()
        .label("up")
        .mov_imm(R0, TC_ACT_OK)
        .exit()
        .label("next")
        .mov_imm(R0, TCX_NEXT)
        .exit();
    a.finish()
}
