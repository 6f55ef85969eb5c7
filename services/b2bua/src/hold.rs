//! Whether an SDP offer puts the call on hold, for the call's event stream.
//!
//! Only the direction attributes and the connection address matter here, so this scans
//! the body's lines instead of parsing it: the relay parses SDP where it has to be
//! understood, and a body it could not parse never reaches an established call.

/// True when the offer asks the other side to stop sending to the offerer: a
/// session- or media-level `a=sendonly` or `a=inactive` (RFC 3264 §8.4), or the
/// RFC 2543 way of a zero connection address (`c=IN IP4 0.0.0.0`). A body with several
/// m-lines counts as held when any of those lines is present (a hold puts every
/// stream on hold in practice).
pub fn sdp_holds(body: &[u8]) -> bool {
    body.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        matches!(line, b"a=sendonly" | b"a=inactive") || line == b"c=IN IP4 0.0.0.0"
    })
}

#[cfg(test)]
mod tests {
    use super::sdp_holds;

    #[test]
    fn direction_and_zero_address_mean_hold() {
        let base = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert!(!sdp_holds(base.as_bytes()));
        assert!(!sdp_holds(format!("{base}a=sendrecv\r\n").as_bytes()));
        assert!(!sdp_holds(format!("{base}a=recvonly\r\n").as_bytes()));
        assert!(sdp_holds(format!("{base}a=sendonly\r\n").as_bytes()));
        assert!(sdp_holds(format!("{base}a=inactive\n").as_bytes()));
        assert!(sdp_holds(
            base.replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0")
                .as_bytes()
        ));
        assert!(!sdp_holds(b""));
    }
}
