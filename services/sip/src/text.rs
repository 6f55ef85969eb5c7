//! Addresses, ports and header values as text, written without `core::fmt`'s machinery.
//!
//! Every Via, Contact and Request-URI the node writes carries an address and a port,
//! several per message. `Ipv4Addr`'s `Display` pads each octet through the formatter
//! and was about 5 % of the node's instructions per call; these write the digits
//! straight into a stack buffer.

use bytes::Bytes;
use std::cell::RefCell;
use std::fmt;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

thread_local! {
    /// Where [`header_bytes`] formats, reused: a `String` per header grew by doubling
    /// (three or four reallocations for a To or Via), and turning it into `Bytes` with
    /// spare capacity cost one more allocation.
    static SCRATCH: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// A header value formatted into one exactly-sized `Bytes` (one allocation).
pub fn header_bytes(value: &impl fmt::Display) -> Bytes {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut s) => {
            s.clear();
            let _ = write!(s, "{value}");
            let out = Bytes::copy_from_slice(s.as_bytes());
            // A rare huge value does not keep its buffer.
            if s.capacity() > 4096 {
                *s = String::with_capacity(256);
            }
            out
        }
        // Only if a Display impl formats a header itself.
        Err(_) => Bytes::from(value.to_string()),
    })
}

/// Writes `:port`.
pub fn write_port(f: &mut fmt::Formatter<'_>, port: u16) -> fmt::Result {
    f.write_str(":")?;
    f.write_str(itoa::Buffer::new().format(port))
}

/// The dotted-quad text of one IPv4 address, on the stack.
pub struct Ipv4Text {
    buf: [u8; 15],
    len: usize,
}

impl Ipv4Text {
    pub fn new(addr: Ipv4Addr) -> Self {
        let mut buf = [0u8; 15];
        let mut len = 0;
        for (i, octet) in addr.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        Ipv4Text { buf, len }
    }

    pub fn as_str(&self) -> &str {
        // Digits and dots only, so always UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Port(u16);
    impl fmt::Display for Port {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_port(f, self.0)
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(&header_bytes(&"a")[..], b"a");
        assert_eq!(
            &header_bytes(&format_args!("{} {}", 1, "INVITE"))[..],
            b"1 INVITE"
        );
        let long = "x".repeat(10_000);
        assert_eq!(header_bytes(&long).len(), 10_000);
        assert_eq!(&header_bytes(&Port(5060))[..], b":5060");
    }

    #[test]
    fn ports() {
        for p in [0u16, 1, 9, 10, 99, 100, 5060, 10000, 65535] {
            assert_eq!(Port(p).to_string(), format!(":{p}"));
        }
    }

    #[test]
    fn matches_the_standard_formatter() {
        for a in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(10, 100, 9, 250),
            Ipv4Addr::new(192, 0, 2, 99),
        ] {
            assert_eq!(Ipv4Text::new(a).as_str(), a.to_string());
        }
        for x in (0..=u32::MAX).step_by(999_983) {
            let a = Ipv4Addr::from(x);
            assert_eq!(Ipv4Text::new(a).as_str(), a.to_string());
        }
    }
}
