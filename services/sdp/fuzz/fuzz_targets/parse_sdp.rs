// Run: cd services/sdp/fuzz && mkdir -p corpus/parse_sdp && RUSTC_BOOTSTRAP=1 cargo fuzz run parse_sdp corpus/parse_sdp ../tests/golden -- -max_total_time=60
// (libFuzzer writes new inputs to the first dir only, so the golden fixtures are only read.)
//! Whatever bytes arrive, parsing, reading the media sections, anchoring and
//! serialising must not panic; anything the parser accepts must serialise to the same
//! bytes; the anchored body must parse again, and anchoring it a second time with the
//! same plans must change nothing.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use trunkline_sdp::{parse, AnchorOptions, MediaPlan};

fuzz_target!(|data: &[u8]| {
    let Ok(mut sdp) = parse(data) else {
        return;
    };
    assert_eq!(sdp.to_bytes(), data, "accepted input does not round-trip");
    let _ = sdp.origin_version();
    let media = sdp.media();
    let plans: Vec<MediaPlan> = media
        .iter()
        .filter(|m| !m.rejected)
        .map(|m| MediaPlan {
            index: m.index,
            address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
            rtp_port: 30000,
            rtcp_port: 30001,
            rtcp_mux: m.rtcp_mux,
        })
        .collect();
    let opts = AnchorOptions::default();
    let before = sdp.to_bytes();
    let changed = sdp.anchor(&plans, &opts);
    let out = sdp.to_bytes();
    assert_eq!(changed, out != before, "anchor() misreported a change");
    let mut again = match parse(&out) {
        Ok(s) => s,
        Err(e) => panic!("anchored body does not re-parse: {e}"),
    };
    assert_eq!(again.to_bytes(), out);
    assert_eq!(again.media().len(), media.len());
    assert!(!again.anchor(&plans, &opts), "anchoring is not idempotent");
});
