//! Which parts of a message cross from one leg to the other.
//!
//! Topology hiding is a whitelist: only headers that describe the session (body type,
//! capabilities) are copied; anything that names hosts, transactions or dialogs of one
//! side (Via, Contact, Record-Route, Route, Call-ID, tags, User-Agent, Server...) is
//! rebuilt by the node for the other side.

use trunkline_sip::{HeaderName, Headers};

/// Option tags the node honours end to end; Supported carries only these, so the far
/// side never relies on an extension the node does not run. None yet: `100rel`,
/// `timer`, `replaces`, `norefersub`, `path` and `gruu` each need handling in the
/// B2BUA (PRACK, session timers, Replaces and REFER across legs, registration) that it
/// does not have, and a tag relayed from one leg would promise it to the other.
const NODE_OPTION_TAGS: &[&str] = &[];

/// Copies the session-describing headers of `from` into `to`.
pub fn copy_session_headers(from: &Headers, to: &mut Headers) {
    for h in from.iter() {
        match h.kind {
            HeaderName::ContentType
            | HeaderName::ContentDisposition
            | HeaderName::ContentEncoding
            | HeaderName::Accept
            | HeaderName::Event
            | HeaderName::Subject
            | HeaderName::Reason
            | HeaderName::RetryAfter => to.push(h.clone()),
            HeaderName::Supported => {
                let kept: Vec<String> = from
                    .option_tags(HeaderName::Supported)
                    .into_iter()
                    .filter(|t| NODE_OPTION_TAGS.contains(&t.as_str()))
                    .collect();
                if !kept.is_empty() && to.get(HeaderName::Supported).is_none() {
                    to.add(HeaderName::Supported, kept.join(", "));
                }
            }
            HeaderName::Other if is_passable_extension(&h.name) => to.push(h.clone()),
            _ => {}
        }
    }
}

/// The caller's identity headers on the B-leg INVITE, as RFC 3325 allows: `Privacy`
/// always (it is the caller's request to whoever comes next); `P-Asserted-Identity` only
/// when the caller's trunk is trusted to assert it, and not toward an untrusted trunk
/// when the caller asked for `Privacy: id`.
pub fn copy_identity(from: &Headers, to: &mut Headers, p: &crate::config::Presentation) {
    let named =
        |h: &trunkline_sip::Header, name: &str| h.name.eq_ignore_ascii_case(name.as_bytes());
    let private = from.iter().filter(|h| named(h, "Privacy")).any(|h| {
        String::from_utf8_lossy(&h.value)
            .split([';', ','])
            .any(|v| v.trim().eq_ignore_ascii_case("id"))
    });
    let pass_asserted = p.assert_identity && (p.callee_trusted || !private);
    for h in from.iter() {
        if named(h, "Privacy") || (pass_asserted && named(h, "P-Asserted-Identity")) {
            to.push(h.clone());
        }
    }
}

/// Extension headers that carry call information rather than topology.
fn is_passable_extension(name: &[u8]) -> bool {
    const NAMES: &[&str] = &[
        "Info-Package",
        "Recv-Info",
        "Content-ID",
        // Describe the body, which crosses (SIP-I carriers send MIME-Version with their
        // multipart SDP + ISUP bodies; RFC 3261 §20.24).
        "MIME-Version",
        "Content-Language",
        "Min-Expires",
        // Mandatory in NOTIFY (RFC 6665 §8.2.1); describes the subscription, not hosts.
        "Subscription-State",
    ];
    NAMES
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_sip::Header;

    #[test]
    fn asserted_identity_crosses_only_from_trusted_trunks_and_privacy_is_honoured() {
        use crate::config::Presentation;
        let caller = |privacy: Option<&str>| {
            let mut h = Headers::new();
            h.push(Header::other(
                "P-Asserted-Identity",
                "<sip:+442071234567@pbx.example>",
            ));
            if let Some(p) = privacy {
                h.push(Header::other("Privacy", p.to_string()));
            }
            h
        };
        let out = |from: &Headers, p: Presentation| {
            let mut to = Headers::new();
            copy_identity(from, &mut to, &p);
            to.iter()
                .map(|h| String::from_utf8_lossy(&h.name).into_owned())
                .collect::<Vec<_>>()
        };
        let trusted_in = Presentation {
            assert_identity: true,
            ..Presentation::default()
        };
        // From an untrusted source: dropped.
        assert!(out(&caller(None), Presentation::default()).is_empty());
        // From a trusted trunk: relayed, to anyone when the caller asks no privacy.
        assert_eq!(
            out(&caller(None), trusted_in.clone()),
            ["P-Asserted-Identity"]
        );
        // Privacy: id keeps it from untrusted trunks, not from trusted ones.
        assert_eq!(out(&caller(Some("id")), trusted_in.clone()), ["Privacy"]);
        assert_eq!(
            out(
                &caller(Some("header; id")),
                Presentation {
                    callee_trusted: true,
                    ..trusted_in.clone()
                }
            ),
            ["P-Asserted-Identity", "Privacy"]
        );
        // Another privacy value is not `id`.
        assert_eq!(
            out(&caller(Some("user")), trusted_in),
            ["P-Asserted-Identity", "Privacy"]
        );
    }

    #[test]
    fn topology_headers_never_cross() {
        let mut from = Headers::new();
        from.add(HeaderName::Via, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa");
        from.add(HeaderName::Contact, "<sip:a@192.0.2.1>");
        from.add(HeaderName::RecordRoute, "<sip:p.example;lr>");
        from.add(HeaderName::UserAgent, "phone/1.0");
        from.add(HeaderName::ContentType, "application/sdp");
        from.add(HeaderName::Supported, "100rel, timer, replaces");
        let mut to = Headers::new();
        copy_session_headers(&from, &mut to);
        let names: Vec<_> = to.iter().map(|h| h.kind).collect();
        assert_eq!(
            names,
            vec![HeaderName::ContentType],
            "Supported names only what the node runs, and that is nothing yet"
        );
    }

    #[test]
    fn body_description_crosses_with_the_body() {
        let mut from = Headers::new();
        from.add(
            HeaderName::ContentType,
            "multipart/mixed;boundary=unique-boundary-1",
        );
        from.push(Header::other("MIME-Version", "1.0"));
        from.push(Header::other("content-language", "en"));
        from.push(Header::other("X-Internal-Route", "pop3"));
        let mut to = Headers::new();
        copy_session_headers(&from, &mut to);
        assert_eq!(&to.get_named("Mime-Version").unwrap()[..], b"1.0");
        assert_eq!(&to.get_named("Content-Language").unwrap()[..], b"en");
        assert!(
            to.get_named("X-Internal-Route").is_none(),
            "unknown extensions stay behind"
        );
    }
}
