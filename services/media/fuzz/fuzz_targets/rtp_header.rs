// Run: cd services/media/fuzz && mkdir -p corpus/rtp_header && RUSTC_BOOTSTRAP=1 cargo fuzz run rtp_header corpus/rtp_header -- -max_total_time=20
//! Whatever a socket delivers, the RTP header parser and the loss tracker must not
//! panic, and an accepted header must describe a payload that lies inside the packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkline_media::rtp::{looks_like_rtcp, parse_header, SeqTracker, FIXED_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_rtcp(data);
    if let Ok(h) = parse_header(data) {
        assert!(h.payload_offset >= FIXED_HEADER_LEN);
        assert_eq!(h.payload_offset + h.payload_len + h.padding, data.len());
        assert!(usize::from(h.csrc_count) <= 15);
        assert!(h.payload_type < 128);
    }
    // Treat the input as a stream of (ssrc byte, sequence number) triples: the loss
    // estimate must never panic or overflow, whatever the order.
    let mut t = SeqTracker::new();
    for c in data.chunks_exact(3) {
        t.update(u32::from(c[0] & 3), u16::from_be_bytes([c[1], c[2]]));
        let _ = t.lost();
    }
});
