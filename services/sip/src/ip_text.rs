//! IPv4 addresses as text, written without `core::fmt`.
//!
//! Every Via, Contact and Request-URI the node writes carries an address, several per
//! message. `Ipv4Addr`'s `Display` pads each octet through the formatter and was about
//! 5 % of the node's instructions per call; this writes the digits straight into a
//! stack buffer.

use std::net::Ipv4Addr;

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
