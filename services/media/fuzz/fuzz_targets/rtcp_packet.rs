// Run: cd services/media/fuzz && mkdir -p corpus/rtcp_packet && RUSTC_BOOTSTRAP=1 cargo fuzz run rtcp_packet corpus/rtcp_packet -- -max_total_time=20
//! Whatever a socket delivers, the RTCP compound parser must not panic; what the strict
//! parser accepts the lenient one accepts identically; RTT arithmetic on any report
//! fields stays finite and non-negative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkline_media::rtcp::{parse_compound, rtt_ms};

fuzz_target!(|data: &[u8]| {
    let lenient = parse_compound(data, false);
    if let Ok(strict) = parse_compound(data, true) {
        assert_eq!(Ok(strict), lenient);
    }
    if let Ok(c) = lenient {
        assert!(c.reports.len() <= c.packets);
        for r in &c.reports {
            assert!(r.blocks.len() <= 31);
            if let Some(s) = r.sender {
                let _ = s.ntp_middle();
            }
            for b in &r.blocks {
                assert!((-(1 << 23)..(1 << 23)).contains(&b.cumulative_lost));
                let now = b.highest_seq;
                if let Some(rtt) = rtt_ms(now, b.lsr, b.dlsr) {
                    assert!(rtt.is_finite() && rtt >= 0.0);
                }
            }
        }
    }
});
