//! Hand-scripted SIP over UDP and TCP, for tests whose peers must do what SIPp's
//! scenarios cannot express: follow a race with two outcomes, hold back a provisional,
//! report which socket and which advertised address each message came with, or send one
//! dialog's requests over two connections to two nodes.

use crate::header;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// An SDP offer or answer for one PCMU stream on 127.0.0.1:`port`.
pub fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// The next datagram within `wait`, as text, with its source.
pub fn recv(sock: &UdpSocket, wait: Duration) -> Option<(String, SocketAddr)> {
    let mut buf = vec![0u8; 65536];
    sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .ok()?;
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// A request's method; `None` for a response.
pub fn method(msg: &str) -> Option<&str> {
    let first = msg.lines().next()?;
    (!first.starts_with("SIP/2.0")).then(|| first.split(' ').next().unwrap_or(""))
}

/// The method named in CSeq (what a response answers).
pub fn cseq_method(msg: &str) -> &str {
    header(msg, "CSeq", None)
        .and_then(|c| c.split_whitespace().nth(1))
        .unwrap_or("")
}

/// A response to `req` with our `tag` (when its To has none), our Contact and an optional
/// SDP body: Via, From, Call-ID and CSeq copied as RFC 3261 §8.2.6.2 says.
pub fn reply(req: &str, status: u16, tag: &str, contact: &str, body: Option<&str>) -> String {
    let mut out = format!("SIP/2.0 {status} X\r\n");
    for line in req.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line.split(':').next().unwrap_or("").trim();
        if ["Via", "v", "From", "f", "Call-ID", "i", "CSeq"]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            out.push_str(line);
            out.push_str("\r\n");
        } else if name.eq_ignore_ascii_case("To") || name == "t" {
            out.push_str(line);
            if !line.contains("tag=") {
                out.push_str(&format!(";tag={tag}"));
            }
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Contact: <sip:bob@{contact}>\r\n"));
    match body {
        Some(b) => out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

/// The host and port of a header value's URI (`<sip:user@host:port;...>` or a bare
/// `sip:` URI), or of a Via's sent-by.
pub fn uri_host_port(value: &str) -> Option<String> {
    let v = value.trim();
    let inner = match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v,
    };
    let rest = if let Some(via) = inner.strip_prefix("SIP/2.0/") {
        via.split_once(' ').map(|(_, r)| r)?
    } else {
        let r = inner.split_once(':').map(|(_, r)| r)?;
        r.rsplit_once('@').map_or(r, |(_, h)| h)
    };
    let end = rest.find([';', '>', '?', ' ']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Reads `sock` until a message satisfying `want` arrives (within `wait`); every message
/// read goes to `seen`, so what came before it can be checked.
pub fn wait_for(
    sock: &UdpSocket,
    wait: Duration,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) -> Option<(String, SocketAddr)> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some((msg, from)) = recv(sock, Duration::from_millis(50)) {
            seen.push(msg.clone());
            if want(&msg) {
                return Some((msg, from));
            }
        }
    }
    None
}

/// One SIP connection over TCP, framed by Content-Length (RFC 3261 §18.3).
pub struct SipStream {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl SipStream {
    pub fn connect(to: SocketAddr) -> std::io::Result<SipStream> {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        stream.set_nodelay(true)?;
        Ok(SipStream {
            stream,
            buf: Vec::new(),
        })
    }

    /// Our end of the connection (what Via and Contact carry).
    pub fn local(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    pub fn send(&mut self, msg: &str) -> std::io::Result<()> {
        self.stream.write_all(msg.as_bytes())
    }

    /// The next whole message within `wait`, as text.
    pub fn recv(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(msg) = self.take_message() {
                return Some(msg);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
                Err(_) => return None,
            }
        }
    }

    /// Reads until a message satisfying `want` arrives (within `wait`); every message
    /// read goes to `seen`.
    pub fn wait_for(
        &mut self,
        wait: Duration,
        seen: &mut Vec<String>,
        want: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let msg = self.recv(left)?;
            seen.push(msg.clone());
            if want(&msg) {
                return Some(msg);
            }
        }
        None
    }

    fn take_message(&mut self) -> Option<String> {
        // Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped.
        while self.buf.starts_with(b"\r\n") {
            self.buf.drain(..2);
        }
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let body = crate::header(&head, "Content-Length", Some("l"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if self.buf.len() < end + body {
            return None;
        }
        let msg: Vec<u8> = self.buf.drain(..end + body).collect();
        Some(String::from_utf8_lossy(&msg).into_owned())
    }
}

/// The first lines of `seen`, for error messages.
pub fn summary(seen: &[String]) -> Vec<String> {
    seen.iter()
        .map(|m| m.lines().next().unwrap_or("").to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_contact_via_and_bare_uri() {
        assert_eq!(
            uri_host_port("\"A\" <sip:alice@192.0.2.1:5060;transport=udp>;expires=60").as_deref(),
            Some("192.0.2.1:5060")
        );
        assert_eq!(
            uri_host_port("SIP/2.0/UDP 192.0.2.2:5070;branch=z9hG4bK1;rport").as_deref(),
            Some("192.0.2.2:5070")
        );
        assert_eq!(
            uri_host_port("sip:host.example").as_deref(),
            Some("host.example")
        );
        assert_eq!(uri_host_port("garbage"), None);
    }
}
