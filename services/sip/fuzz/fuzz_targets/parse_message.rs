// tests/run.sh: cd services/sip && RUSTC_BOOTSTRAP=1 cargo fuzz run parse_message fuzz/corpus/parse_message ../../tests/conformance/rfc4475 -- -max_total_time=45 (libFuzzer writes new inputs to the first dir, so the RFC 4475 seeds are only read).
//! Whatever bytes arrive, the parser, validation, salvage, the encoder and what a
//! TU derives from a received message (transaction keys, dialogs) must not panic,
//! and anything the parser accepts must encode to bytes that parse back to the
//! same message (method or status, Call-ID, body).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use trunkline_sip::transaction::TxKey;
use trunkline_sip::{
    parse_message, rejection_response, salvage, validate_request, validate_response, Dialog, Host,
    Message, Method, Policy, Via,
};

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let Ok(msg) = parse_message(data.clone()) else {
        // The path that answers a broken request with 400.
        if let Some(s) = salvage(&data) {
            let _ = s.headers.top_via();
            let _ = s.headers.cseq();
        }
        return;
    };
    match &msg {
        Message::Request(r) => {
            if let Err(rej) = validate_request(r, &Policy::default()) {
                let resp = rejection_response(r, &rej);
                if let Err(e) = parse_message(resp.encode()) {
                    panic!("rejection {} does not re-parse: {e}", rej.status);
                }
            }
            // What the TU does with a request, valid or not.
            let _ = TxKey::server(r);
            let _ = TxKey::cancel_target(r);
            let _ = TxKey::client_for_request(r);
            if let Ok(d) = Dialog::uas(r, "fuzz") {
                let _ = d.next_hop();
                // An in-dialog request built from a valid request must be sendable.
                if validate_request(r, &Policy::default()).is_ok() {
                    let via = Via::new(
                        "UDP",
                        Host::Domain("fuzz.invalid".into()),
                        None,
                        "z9hG4bKfuzz".into(),
                    );
                    let bye = d.request(Method::Bye, 1, &via, None).encode();
                    if let Err(e) = parse_message(bye.clone()) {
                        panic!(
                            "in-dialog BYE does not parse: {e}: {:?}",
                            String::from_utf8_lossy(&bye)
                        );
                    }
                }
            }
        }
        Message::Response(r) => {
            let _ = validate_response(r);
            let _ = TxKey::client(r);
            if let Some(via) = r.headers.top_via() {
                let _ = via.response_target();
            }
        }
    }
    let again = match parse_message(msg.encode()) {
        Ok(m) => m,
        Err(e) => panic!("encoding of an accepted message does not re-parse: {e}"),
    };
    match (&msg, &again) {
        (Message::Request(a), Message::Request(b)) => {
            assert_eq!(a.method, b.method);
            assert_eq!(a.uri, b.uri);
            assert_eq!(a.body, b.body);
        }
        (Message::Response(a), Message::Response(b)) => {
            assert_eq!(a.status, b.status);
            assert_eq!(a.body, b.body);
        }
        _ => panic!("request/response kind changed on re-parse"),
    }
    assert_eq!(msg.headers().call_id(), again.headers().call_id());
});
