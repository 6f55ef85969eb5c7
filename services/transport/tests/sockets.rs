//! Socket tests on loopback, every wait bounded.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use trunkline_transport::{
    Host, Inbound, ListenerConfig, Peer, Received, Transport, TransportConfig, TransportError,
    Transports,
};

const WAIT: Duration = Duration::from_secs(5);

/// One `on_send_error` call.
#[derive(Debug, Clone)]
struct SendError {
    peer: Peer,
    token: Option<u64>,
    error: String,
}

struct Collect {
    messages: mpsc::UnboundedSender<Received>,
    errors: Mutex<Vec<SendError>>,
}

impl Inbound for Collect {
    fn on_message(&self, msg: Received) {
        let _ = self.messages.send(msg);
    }
    fn on_send_error(&self, peer: &Peer, token: Option<u64>, error: &TransportError) {
        self.errors.lock().unwrap().push(SendError {
            peer: *peer,
            token,
            error: error.to_string(),
        });
    }
}

struct Node {
    transports: Transports,
    inbound: Arc<Collect>,
    messages: mpsc::UnboundedReceiver<Received>,
    registry: Registry,
}

impl Node {
    async fn start(config: TransportConfig) -> Node {
        let (tx, messages) = mpsc::unbounded_channel();
        let inbound = Arc::new(Collect {
            messages: tx,
            errors: Mutex::new(Vec::new()),
        });
        let mut registry = Registry::default();
        let transports = Transports::start(config, inbound.clone(), &mut registry)
            .await
            .unwrap();
        Node {
            transports,
            inbound,
            messages,
            registry,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.messages.recv())
            .await
            .expect("message in time")
            .expect("channel open")
    }

    fn tcp(&self) -> SocketAddr {
        self.transports.local_addr(Transport::Tcp).unwrap()
    }

    fn udp(&self) -> SocketAddr {
        self.transports.local_addr(Transport::Udp).unwrap()
    }

    fn errors(&self) -> Vec<SendError> {
        self.inbound.errors.lock().unwrap().clone()
    }

    /// Tokens of every reported error, sorted.
    fn error_tokens(&self) -> Vec<Option<u64>> {
        let mut tokens: Vec<_> = self.errors().iter().map(|e| e.token).collect();
        tokens.sort();
        tokens
    }

    /// Value of one sample in the text exposition, 0 if absent.
    fn metric(&self, sample: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait_no_connections(&self) {
        eventually(|| self.transports.connection_count() == 0).await;
        assert_eq!(
            self.metric("trunkline_transport_connections_active{transport=\"tcp\"}"),
            0.0
        );
    }
}

fn any_port(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 0))
}

fn loopback() -> TransportConfig {
    let any = any_port([127, 0, 0, 1]);
    TransportConfig {
        udp: vec![any.into()],
        tcp: vec![any.into()],
        ..TransportConfig::default()
    }
}

/// Listeners on 127.0.0.1 and 127.0.0.2, the second advertised as `sbc.example.net`: a node
/// on two networks.
fn two_homed() -> TransportConfig {
    let second = || {
        ListenerConfig::advertised(
            any_port([127, 0, 0, 2]),
            Host::parse("sbc.example.net").unwrap(),
        )
    };
    TransportConfig {
        udp: vec![any_port([127, 0, 0, 1]).into(), second()],
        tcp: vec![any_port([127, 0, 0, 1]).into(), second()],
        ..TransportConfig::default()
    }
}

fn tcp_to(addr: SocketAddr) -> Peer {
    Peer::new(Transport::Tcp, addr)
}

/// A TCP client bound to a source IP, for per-source tests.
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(any_port(ip)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A loopback port with nothing listening.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn eventually(mut check: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition in time");
}

fn sip(body: &str) -> String {
    format!(
        "OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until EOF and returns what came, failing if EOF does not come in time.
async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    read_to_eof_within(stream, WAIT).await
}

async fn read_to_eof_within(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("connection closed in time");
    out
}

async fn read_exact_in_time(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("data in time")
        .unwrap();
    buf
}

#[tokio::test]
async fn udp_round_trip_keepalive_and_oversize() {
    let mut node = Node::start(TransportConfig {
        max_message_bytes: 1024,
        ..loopback()
    })
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = node.udp();

    client.send_to(b"\r\n\r\n", server).await.unwrap();
    client.send_to(&[b'x'; 2000], server).await.unwrap();
    let request = sip("hello");
    client.send_to(request.as_bytes(), server).await.unwrap();

    let msg = node.next().await;
    assert_eq!(msg.data, Bytes::from(request));
    assert_eq!(msg.peer.addr, client.local_addr().unwrap());
    assert_eq!(msg.peer.local, Some(server));
    assert_eq!(msg.peer.transport, Transport::Udp);
    assert_eq!(msg.peer.connection, None);
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"oversize\"}"),
        1.0
    );

    node.transports
        .send(&msg.peer, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"));
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"SIP/2.0 200 OK\r\n\r\n");
    assert_eq!(from, server);

    // Random bytes are handed up whole: parsing them is the parser's job.
    client.send_to(&[0xff, 0x00, 0x13], server).await.unwrap();
    assert_eq!(&node.next().await.data[..], &[0xff, 0x00, 0x13]);
    node.transports.shutdown().await;
}

#[tokio::test]
async fn udp_and_tcp_on_ipv6_loopback() {
    let any6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    let Ok(client) = UdpSocket::bind(any6).await else {
        return; // no IPv6 on this host
    };
    let mut node = Node::start(TransportConfig {
        udp: vec![any6.into()],
        tcp: vec![any6.into()],
        ..loopback()
    })
    .await;
    assert!(node.udp().is_ipv6() && node.udp().port() != 0);
    client
        .send_to(sip("").as_bytes(), node.udp())
        .await
        .unwrap();
    assert!(node.next().await.peer.addr.is_ipv6());

    let mut stream = TcpStream::connect(node.tcp()).await.unwrap();
    stream.write_all(sip("v6").as_bytes()).await.unwrap();
    let msg = node.next().await;
    assert_eq!(msg.peer.addr, stream.local_addr().unwrap());
    node.transports.shutdown().await;
}

#[tokio::test]
async fn tcp_response_goes_back_on_the_request_connection() {
    let mut node = Node::start(loopback()).await;
    let mut client = TcpStream::connect(node.tcp()).await.unwrap();
    let (a, b) = (sip("first"), sip(""));
    // Two messages, the second split over two writes, with a leading CRLF.
    client
        .write_all(format!("\r\n{a}{}", &b[..10]).as_bytes())
        .await
        .unwrap();
    let first = node.next().await;
    assert_eq!(first.data, Bytes::from(a));
    client.write_all(&b.as_bytes()[10..]).await.unwrap();
    let second = node.next().await;
    assert_eq!(second.data, Bytes::from(b));
    assert_eq!(first.peer.connection, second.peer.connection);
    assert!(first.peer.connection.is_some());
    assert_eq!(first.peer.addr, client.local_addr().unwrap());
    assert_eq!(first.peer.local, Some(node.tcp()));

    let response = sip("response");
    node.transports
        .send(&first.peer, Bytes::from(response.clone()));
    assert_eq!(
        read_exact_in_time(&mut client, response.len()).await,
        response.as_bytes()
    );

    // RFC 5626 ping gets a single CRLF pong and is not handed up.
    client.write_all(b"\r\n\r\n").await.unwrap();
    assert_eq!(read_exact_in_time(&mut client, 2).await, b"\r\n");
    assert!(node.messages.try_recv().is_err());

    assert_eq!(
        node.metric(
            "trunkline_transport_connections_total{transport=\"tcp\",direction=\"inbound\"}"
        ),
        1.0
    );
    drop(client);
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test]
async fn tcp_64k_message_is_delivered_when_the_limit_allows() {
    let mut node = Node::start(TransportConfig {
        max_message_bytes: 70_000,
        ..loopback()
    })
    .await;
    let mut client = TcpStream::connect(node.tcp()).await.unwrap();
    let big = sip(&"a".repeat(64 * 1024));
    client.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(node.next().await.data.len(), big.len());
    node.transports.shutdown().await;
}

#[tokio::test]
async fn outbound_tcp_connection_is_opened_reused_and_read() {
    let mut node = Node::start(loopback()).await;
    let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trunk_addr = trunk.local_addr().unwrap();

    let request = sip("invite");
    node.transports
        .send(&tcp_to(trunk_addr), Bytes::from(request.clone()));
    let (mut conn, _) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read_exact_in_time(&mut conn, request.len()).await,
        request.as_bytes()
    );

    // A second send to the same address reuses the connection.
    node.transports
        .send(&tcp_to(trunk_addr), Bytes::from(request.clone()));
    assert_eq!(
        read_exact_in_time(&mut conn, request.len()).await,
        request.as_bytes()
    );

    // The trunk's response comes back on the outbound connection.
    let response = sip("ok");
    conn.write_all(response.as_bytes()).await.unwrap();
    let msg = node.next().await;
    assert_eq!(msg.data, Bytes::from(response));
    assert_eq!(msg.peer.addr, trunk_addr);
    assert!(msg.peer.connection.is_some());
    assert_eq!(msg.peer.local, Some(node.tcp()));
    assert_eq!(
        node.metric(
            "trunkline_transport_connections_total{transport=\"tcp\",direction=\"outbound\"}"
        ),
        1.0
    );
    assert_eq!(node.transports.connection_count(), 1);

    drop(conn);
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test]
async fn half_message_stall_is_closed_after_partial_timeout() {
    let node = Node::start(TransportConfig {
        tcp_partial_timeout: Duration::from_millis(200),
        ..loopback()
    })
    .await;
    let mut client = TcpStream::connect(node.tcp()).await.unwrap();
    let m = sip("body");
    client
        .write_all(&m.as_bytes()[..m.len() / 2])
        .await
        .unwrap();
    assert!(read_to_eof(&mut client).await.is_empty());
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"partial_timeout\"}"),
        1.0
    );
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let node = Node::start(TransportConfig {
        tcp_idle_timeout: Duration::from_millis(200),
        ..loopback()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TcpStream::connect(node.tcp()).await.unwrap());
    }
    for client in &mut clients {
        assert!(read_to_eof(client).await.is_empty());
    }
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"idle_timeout\"}"),
        20.0
    );
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test]
async fn inbound_limit_is_enforced() {
    let node = Node::start(TransportConfig {
        tcp_max_inbound: 2,
        ..loopback()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(node.tcp()).await.unwrap();
        c.write_all(b"\r\n\r\n").await.unwrap();
        assert_eq!(read_exact_in_time(&mut c, 2).await, b"\r\n");
        held.push(c);
    }
    let mut third = TcpStream::connect(node.tcp()).await.unwrap();
    assert!(read_to_eof(&mut third).await.is_empty());
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"inbound_limit\"}"),
        1.0
    );
    assert_eq!(node.transports.connection_count(), 2);
    drop(held);
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test]
async fn framing_errors_close_the_connection() {
    let node = Node::start(TransportConfig {
        max_message_bytes: 1024,
        ..loopback()
    })
    .await;
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"INVITE sip:a SIP/2.0\r\nContent-Length: 5000\r\n\r\n".to_vec(),
            "oversize",
        ),
        // 64 KiB of bytes with no header end at all.
        (
            (0..64 * 1024).map(|i| (i % 251) as u8 | 1).collect(),
            "oversize",
        ),
        (
            b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n".to_vec(),
            "no_content_length",
        ),
        (
            b"OPTIONS sip:a SIP/2.0\r\nl: -4\r\n\r\n".to_vec(),
            "bad_content_length",
        ),
    ];
    for (bytes, _) in &cases {
        let mut client = TcpStream::connect(node.tcp()).await.unwrap();
        // The server may close before everything is written; that is the point.
        let _ = client.write_all(bytes).await;
        read_to_eof(&mut client).await;
    }
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"oversize\"}"),
        2.0
    );
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"no_content_length\"}"),
        1.0
    );
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"bad_content_length\"}"),
        1.0
    );
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_refuses_sends() {
    let node = Node::start(loopback()).await;
    let mut client = TcpStream::connect(node.tcp()).await.unwrap();
    eventually(|| node.transports.connection_count() == 1).await;
    node.transports.shutdown().await;
    assert!(read_to_eof(&mut client).await.is_empty());
    assert_eq!(node.transports.connection_count(), 0);
    node.transports.send_tracked(
        &Peer::new(Transport::Udp, "127.0.0.1:9".parse().unwrap()),
        Bytes::from_static(b"x"),
        7,
    );
    node.transports.send(
        &tcp_to("127.0.0.1:9".parse().unwrap()),
        Bytes::from_static(b"x"),
    );
    // Reported at once, from inside the calls.
    assert_eq!(node.error_tokens(), vec![None, Some(7)]);
    assert!(node.errors().iter().all(|e| e.error.contains("shut down")));
    assert_eq!(node.transports.listeners().len(), 2);
}

#[tokio::test]
async fn a_thousand_idle_connections_are_all_closed_and_freed() {
    let node = Node::start(TransportConfig {
        tcp_idle_timeout: Duration::from_millis(300),
        // All from 127.0.0.1.
        tcp_max_per_source: 1000,
        ..loopback()
    })
    .await;
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(TcpStream::connect(node.tcp()).await.unwrap());
    }
    for client in &mut clients {
        assert!(read_to_eof(client).await.is_empty());
    }
    node.wait_no_connections().await;
    assert_eq!(
        node.metric(
            "trunkline_transport_connections_total{transport=\"tcp\",direction=\"inbound\"}"
        ),
        1000.0
    );
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"idle_timeout\"}"),
        1000.0
    );
    node.transports.shutdown().await;
}

// --- Send errors reach the sender, once per message -------------------------------------

#[tokio::test]
async fn refused_connect_reports_every_queued_message_with_its_token() {
    let node = Node::start(loopback()).await;
    let closed = closed_port().await;
    // Back to back, before the connect task runs (this is a current-thread runtime): the
    // first send opens the connection, the others queue behind it.
    for token in 1..=3 {
        node.transports
            .send_tracked(&tcp_to(closed), Bytes::from(sip("")), token);
    }
    node.transports.send(&tcp_to(closed), Bytes::from(sip("")));
    assert!(node.errors().is_empty(), "nothing failed yet");

    eventually(|| node.errors().len() >= 4).await;
    node.wait_no_connections().await;
    assert_eq!(node.error_tokens(), vec![None, Some(1), Some(2), Some(3)]);
    for e in node.errors() {
        assert_eq!(e.peer, tcp_to(closed));
        assert!(e.error.contains("cannot connect"), "{}", e.error);
    }
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"send_error\"}"),
        4.0
    );
    node.transports.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_reports_every_queued_message_with_its_token() {
    let node = Node::start(TransportConfig {
        tcp_connect_timeout: Duration::from_secs(1),
        ..loopback()
    })
    .await;
    // A listener with a full accept queue that never accepts: Linux drops further SYNs, so
    // a connect to it neither succeeds nor fails until our timeout.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&any_port([127, 0, 0, 1]).into()).unwrap();
    socket.listen(0).unwrap();
    let full: SocketAddr = socket.local_addr().unwrap().as_socket().unwrap();
    let _queued = TcpStream::connect(full).await.unwrap();

    for token in 10..15 {
        node.transports
            .send_tracked(&tcp_to(full), Bytes::from(sip("")), token);
    }
    eventually(|| node.errors().len() >= 5).await;
    node.wait_no_connections().await;
    assert_eq!(node.error_tokens(), (10..15).map(Some).collect::<Vec<_>>());
    assert!(node.errors().iter().all(|e| e.error.contains("timed out")));
    node.transports.shutdown().await;
}

#[tokio::test]
async fn full_queue_is_reported_at_once_and_nothing_else_fails() {
    let node = Node::start(loopback()).await;
    let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trunk_addr = trunk.local_addr().unwrap();
    let request = sip("queued");
    // Nothing is written while this loop runs (the connect task has not run yet), so the
    // queue fills; the first send that does not fit is reported from inside the call.
    let mut sent = 0u64;
    while node.errors().is_empty() && sent < 10_000 {
        node.transports
            .send_tracked(&tcp_to(trunk_addr), Bytes::from(request.clone()), sent);
        sent += 1;
    }
    let errors = node.errors();
    assert_eq!(errors.len(), 1);
    let rejected = sent - 1;
    assert_eq!(errors[0].token, Some(rejected));
    assert!(errors[0].error.contains("full"), "{}", errors[0].error);

    // Every message that was queued arrives, and none is reported.
    let (mut conn, _) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    let len = usize::try_from(rejected).unwrap() * request.len();
    let got = read_exact_in_time(&mut conn, len).await;
    assert!(got.chunks(request.len()).all(|m| m == request.as_bytes()));
    assert_eq!(node.errors().len(), 1);
    node.transports.shutdown().await;
}

#[tokio::test]
async fn a_connection_queues_at_most_its_byte_budget() {
    // A peer that reads nothing: large answers stop being queued at the byte budget,
    // long before the queue's message count.
    let budget = 64 * 1024;
    let node = Node::start(TransportConfig {
        tcp_send_queue_bytes: budget,
        ..loopback()
    })
    .await;
    let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trunk_addr = trunk.local_addr().unwrap();
    let request = sip(&"x".repeat(8 * 1024 - 200));
    let mut sent = 0u64;
    while node.errors().is_empty() && sent < 1000 {
        node.transports
            .send_tracked(&tcp_to(trunk_addr), Bytes::from(request.clone()), sent);
        sent += 1;
    }
    let errors = node.errors();
    assert_eq!(errors.len(), 1);
    let queued = sent - 1;
    assert_eq!(
        queued as usize,
        budget / request.len(),
        "what fits the budget"
    );
    assert!(errors[0].error.contains("full"), "{}", errors[0].error);
    // Once written, the budget is free again.
    let (mut conn, _) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    let got = read_exact_in_time(&mut conn, queued as usize * request.len()).await;
    assert!(got.chunks(request.len()).all(|m| m == request.as_bytes()));
    node.transports
        .send_tracked(&tcp_to(trunk_addr), Bytes::from(request.clone()), sent);
    let again = read_exact_in_time(&mut conn, request.len()).await;
    assert_eq!(again, request.as_bytes());
    assert_eq!(node.errors().len(), 1);
    node.transports.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stalled_writes_report_each_unwritten_message_once() {
    const MESSAGES: u64 = 200;
    const SIZE: usize = 512 * 1024;
    let node = Node::start(TransportConfig {
        tcp_partial_timeout: Duration::from_secs(2),
        // Room for every message at once: what is tested here is the stalled write.
        tcp_send_queue_bytes: MESSAGES as usize * SIZE,
        ..loopback()
    })
    .await;
    // A trunk that accepts and then does not read: the socket buffers fill, a write stalls
    // and times out.
    let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trunk_addr = trunk.local_addr().unwrap();
    let message = Bytes::from(vec![b'x'; SIZE]);
    for token in 0..MESSAGES {
        node.transports
            .send_tracked(&tcp_to(trunk_addr), message.clone(), token);
    }
    let (mut conn, _) = trunk.accept().await.unwrap();
    eventually(|| !node.errors().is_empty()).await;
    node.wait_no_connections().await;

    // What was written arrives (the last one perhaps in part); everything else was
    // reported, once, in order: the failed ones are exactly the tail.
    let delivered = read_to_eof(&mut conn).await.len() / SIZE;
    let failed = node.error_tokens();
    assert!(!failed.is_empty() && failed.len() < MESSAGES as usize);
    let first_failed = MESSAGES - failed.len() as u64;
    assert_eq!(
        failed,
        (first_failed..MESSAGES).map(Some).collect::<Vec<_>>()
    );
    assert_eq!(delivered as u64, first_failed);
    assert!(node
        .errors()
        .iter()
        .all(|e| e.error.contains("timed out") || e.error.contains("closed")));
    node.transports.shutdown().await;
}

#[tokio::test]
async fn unknown_local_socket_is_reported_with_the_token() {
    let node = Node::start(loopback()).await;
    let peer = Peer {
        local: Some("127.0.0.1:1".parse().unwrap()),
        ..Peer::new(Transport::Udp, "127.0.0.1:9".parse().unwrap())
    };
    node.transports
        .send_tracked(&peer, Bytes::from(sip("")), 42);
    let errors = node.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].peer, errors[0].token), (peer, Some(42)));
    assert!(errors[0].error.contains("no UDP listener on 127.0.0.1:1"));
    node.transports.shutdown().await;
}

// --- Multi-homed: each message leaves from its socket --------------------------------------

#[tokio::test]
async fn udp_replies_and_sends_leave_from_the_named_socket() {
    let mut node = Node::start(two_homed()).await;
    let listeners = node.transports.listeners().to_vec();
    let (first, second) = (listeners[0].local, listeners[1].local);
    assert_eq!(first.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_eq!(second.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
    assert_ne!(second.port(), 0, "port 0 is resolved");
    assert_eq!(listeners[0].advertise, Host::parse("127.0.0.1").unwrap());
    assert_eq!(
        listeners[1].advertise,
        Host::parse("sbc.example.net").unwrap()
    );

    // A request to 127.0.0.2 is answered from 127.0.0.2.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(sip("").as_bytes(), second).await.unwrap();
    let msg = node.next().await;
    assert_eq!(msg.peer.local, Some(second));
    let via = node.transports.listener_for(&msg.peer).unwrap();
    assert_eq!(via.advertise, Host::parse("sbc.example.net").unwrap());
    node.transports
        .send(&msg.peer, Bytes::from_static(b"reply"));
    let mut buf = [0u8; 64];
    let (_, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, second);

    // A new hop: `local` picks the socket, none means the first.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = Peer::new(Transport::Udp, other.local_addr().unwrap());
    for (peer, expected) in [
        (
            Peer {
                local: Some(second),
                ..to
            },
            second,
        ),
        (to, first),
    ] {
        node.transports.send(&peer, Bytes::from_static(b"hello"));
        let (_, from) = tokio::time::timeout(WAIT, other.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, expected);
        assert_eq!(node.transports.listener_for(&peer).unwrap().local, expected);
    }
    assert!(node.errors().is_empty());
    node.transports.shutdown().await;
}

#[tokio::test]
async fn tcp_connections_are_bound_to_the_named_listener() {
    let mut node = Node::start(two_homed()).await;
    let listeners = node.transports.listeners().to_vec();
    let (first, second) = (listeners[2].local, listeners[3].local);
    assert_eq!(listeners[3].transport, Transport::Tcp);
    assert_eq!(
        node.transports.listener(Transport::Tcp, second),
        Some(&listeners[3])
    );

    // Toward a trunk from 127.0.0.2: the trunk sees that address, and its answer comes up
    // marked with our 127.0.0.2 listener.
    let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trunk_addr = trunk.local_addr().unwrap();
    let via_second = Peer {
        local: Some(second),
        ..tcp_to(trunk_addr)
    };
    node.transports.send(&via_second, Bytes::from(sip("a")));
    let (mut conn, from) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from.ip(), second.ip());
    read_exact_in_time(&mut conn, sip("a").len()).await;
    conn.write_all(sip("answer").as_bytes()).await.unwrap();
    let answer = node.next().await;
    assert_eq!(answer.peer.local, Some(second));
    assert_eq!(
        node.transports
            .listener_for(&answer.peer)
            .unwrap()
            .advertise,
        Host::parse("sbc.example.net").unwrap()
    );

    // The same trunk without a listener named: the first listener's connection, a new one.
    node.transports
        .send(&tcp_to(trunk_addr), Bytes::from(sip("b")));
    let (_conn2, _) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.transports.connection_count(), 2);

    // A request accepted on 127.0.0.2 is answered on its connection.
    let mut client = TcpStream::connect(second).await.unwrap();
    client.write_all(sip("req").as_bytes()).await.unwrap();
    let req = node.next().await;
    assert_eq!(req.peer.local, Some(second));
    node.transports.send(&req.peer, Bytes::from(sip("resp")));
    assert_eq!(
        read_exact_in_time(&mut client, sip("resp").len()).await,
        sip("resp").as_bytes()
    );
    assert_ne!(first, second);
    assert!(node.errors().is_empty());
    node.transports.shutdown().await;
}

#[tokio::test]
async fn wildcard_listener_without_advertise_fails_start() {
    let mut registry = Registry::default();
    let (tx, _rx) = mpsc::unbounded_channel();
    let inbound = Arc::new(Collect {
        messages: tx,
        errors: Mutex::new(Vec::new()),
    });
    let config = TransportConfig {
        udp: vec![any_port([0, 0, 0, 0]).into()],
        tcp: vec![],
        ..TransportConfig::default()
    };
    let error = Transports::start(config, inbound, &mut registry)
        .await
        .unwrap_err();
    assert!(
        matches!(error, TransportError::NoAdvertise { .. }),
        "{error}"
    );
}

// --- TCP limits ------------------------------------------------------------------------------

/// Connects and proves the node serves the connection (a ping gets its pong).
async fn served(mut c: TcpStream) -> TcpStream {
    c.write_all(b"\r\n\r\n").await.unwrap();
    assert_eq!(read_exact_in_time(&mut c, 2).await, b"\r\n");
    c
}

#[tokio::test]
async fn per_source_limit_closes_only_that_source() {
    let node = Node::start(TransportConfig {
        tcp_max_per_source: 2,
        ..loopback()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(served(connect_from([127, 0, 0, 1], node.tcp()).await).await);
    }
    let mut third = connect_from([127, 0, 0, 1], node.tcp()).await;
    assert!(read_to_eof(&mut third).await.is_empty());
    // Another source still gets in.
    held.push(served(connect_from([127, 0, 0, 2], node.tcp()).await).await);
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"source_limit\"}"),
        1.0
    );
    assert_eq!(node.transports.connection_count(), 3);
    drop(held);
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test]
async fn outbound_limit_fails_the_send_but_not_inbound() {
    let node = Node::start(TransportConfig {
        tcp_max_outbound: 1,
        tcp_max_inbound: 1,
        ..loopback()
    })
    .await;
    let trunk_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trunk_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    node.transports.send_tracked(
        &tcp_to(trunk_a.local_addr().unwrap()),
        Bytes::from(sip("")),
        1,
    );
    let _a = tokio::time::timeout(WAIT, trunk_a.accept()).await.unwrap();
    // Inbound connections have their own budget.
    let _inbound = served(TcpStream::connect(node.tcp()).await.unwrap()).await;

    let to_b = tcp_to(trunk_b.local_addr().unwrap());
    node.transports.send_tracked(&to_b, Bytes::from(sip("")), 2);
    let errors = node.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].peer, errors[0].token), (to_b, Some(2)));
    assert!(errors[0].error.contains("outbound"), "{}", errors[0].error);
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"outbound_limit\"}"),
        1.0
    );
    node.transports.shutdown().await;
}

// --- Idle: traffic either way, and pins ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn writes_count_as_activity() {
    let mut node = Node::start(TransportConfig {
        tcp_idle_timeout: Duration::from_secs(3),
        ..loopback()
    })
    .await;
    let mut client = TcpStream::connect(node.tcp()).await.unwrap();
    client.write_all(sip("hello").as_bytes()).await.unwrap();
    let hop = node.next().await.peer;
    // The client never writes again; we write every 2 s for five idle periods.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.transports.send(&hop, Bytes::from(sip("tick")));
        read_exact_in_time(&mut client, sip("tick").len()).await;
    }
    assert_eq!(node.transports.connection_count(), 1);
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"idle_timeout\"}"),
        0.0
    );
    // Silence both ways: now it is idle.
    assert!(read_to_eof(&mut client).await.is_empty());
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"idle_timeout\"}"),
        1.0
    );
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn pinned_connection_is_not_closed_as_idle() {
    let mut node = Node::start(TransportConfig {
        tcp_idle_timeout: Duration::from_secs(3),
        tcp_partial_timeout: Duration::from_secs(2),
        ..loopback()
    })
    .await;
    let mut pinned = TcpStream::connect(node.tcp()).await.unwrap();
    pinned.write_all(sip("call").as_bytes()).await.unwrap();
    let id = node.next().await.peer.connection.unwrap();
    let pin = node.transports.pin(id).unwrap();
    assert_eq!(pin.connection(), id);
    assert!(node.transports.pin(id + 1000).is_none());

    // An unpinned neighbour of the same age is closed; the pinned one outlives an hour.
    let mut other = TcpStream::connect(node.tcp()).await.unwrap();
    assert!(read_to_eof(&mut other).await.is_empty());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(node.transports.connection_count(), 1);

    // The pinned connection still carries traffic both ways.
    pinned.write_all(sip("bye").as_bytes()).await.unwrap();
    let bye = node.next().await;
    assert_eq!(bye.peer.connection, Some(id));
    node.transports.send(&bye.peer, Bytes::from(sip("ok")));
    read_exact_in_time(&mut pinned, sip("ok").len()).await;

    // Unpinned, it idles out like any other.
    drop(pin);
    assert!(read_to_eof(&mut pinned).await.is_empty());
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"idle_timeout\"}"),
        2.0
    );
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_pin_does_not_protect_a_stalled_message() {
    let mut node = Node::start(TransportConfig {
        tcp_idle_timeout: Duration::from_secs(3),
        tcp_partial_timeout: Duration::from_secs(2),
        ..loopback()
    })
    .await;
    let mut client = TcpStream::connect(node.tcp()).await.unwrap();
    client.write_all(sip("call").as_bytes()).await.unwrap();
    let id = node.next().await.peer.connection.unwrap();
    let _pin = node.transports.pin(id).unwrap();
    let m = sip("half");
    client
        .write_all(&m.as_bytes()[..m.len() / 2])
        .await
        .unwrap();
    assert!(read_to_eof(&mut client).await.is_empty());
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"partial_timeout\"}"),
        1.0
    );
    node.wait_no_connections().await;
    assert!(node.transports.pin(id).is_none());
    node.transports.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_nodes_own_connections_are_kept_alive_and_a_peer_that_stops_ponging_is_dropped() {
    let node = Node::start(TransportConfig {
        tcp_keepalive: Some(Duration::from_secs(30)),
        tcp_idle_timeout: Duration::from_secs(300),
        ..loopback()
    })
    .await;
    let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let request = sip("invite");
    node.transports.send(
        &tcp_to(trunk.local_addr().unwrap()),
        Bytes::from(request.clone()),
    );
    let (mut conn, _) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    read_exact_in_time(&mut conn, request.len()).await;
    // Every 30 s a CRLFCRLF ping; the trunk answers each with a CRLF pong.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(29)).await;
        let ping = tokio::time::timeout(Duration::from_secs(2), async {
            let mut b = [0u8; 4];
            conn.read_exact(&mut b).await.map(|_| b)
        })
        .await
        .expect("a ping within the interval")
        .unwrap();
        assert_eq!(&ping, b"\r\n\r\n");
        conn.write_all(b"\r\n").await.unwrap();
    }
    assert_eq!(node.transports.connection_count(), 1);
    // The trunk stops answering: 10 s after the next ping the connection is closed.
    let rest = read_to_eof_within(&mut conn, Duration::from_secs(45)).await;
    assert_eq!(rest, b"\r\n\r\n", "one more ping, then the close");
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"keepalive_timeout\"}"),
        1.0
    );
    node.wait_no_connections().await;
    node.transports.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_pongs_is_kept_and_pings_do_not_hold_an_idle_connection() {
    let node = Node::start(TransportConfig {
        tcp_keepalive: Some(Duration::from_secs(30)),
        tcp_idle_timeout: Duration::from_secs(100),
        ..loopback()
    })
    .await;
    let trunk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    node.transports
        .send(&tcp_to(trunk.local_addr().unwrap()), Bytes::from(sip("x")));
    let (mut conn, _) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    read_exact_in_time(&mut conn, sip("x").len()).await;
    // No pongs ever: not a keep-alive failure; but three pings (30, 60, 90 s) do not
    // make the connection busy, so it goes idle at 100 s.
    let rest = read_to_eof_within(&mut conn, Duration::from_secs(120)).await;
    assert_eq!(rest, b"\r\n\r\n\r\n\r\n\r\n\r\n");
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"keepalive_timeout\"}"),
        0.0
    );
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"idle_timeout\"}"),
        1.0
    );
    node.transports.shutdown().await;
}

/// Holds up the receive loop at its first message until released, and notes whether the
/// node said it was congested while it handed up each later one.
#[derive(Default)]
struct Stall {
    released: Mutex<bool>,
    wake: std::sync::Condvar,
    messages: std::sync::atomic::AtomicUsize,
    transports: std::sync::OnceLock<Arc<Transports>>,
    saw_congested: std::sync::atomic::AtomicBool,
}

impl Inbound for Stall {
    fn on_message(&self, _msg: Received) {
        use std::sync::atomic::Ordering;
        if self.messages.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut released = self.released.lock().unwrap();
            while !*released {
                released = self.wake.wait(released).unwrap();
            }
        } else if self.transports.get().is_some_and(|t| t.receive_congested()) {
            self.saw_congested.store(true, Ordering::SeqCst);
        }
    }
}

/// Waits (blocking the thread) until `check` holds; panics after `WAIT`.
fn wait_until(mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "condition in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A receive loop that falls behind says so while its queue is deep, and stops saying
/// so once it has caught up.
///
/// The loop is held up inside `on_message`, which blocks a runtime worker; the node gets
/// a runtime of its own and the test waits on plain threads, so nothing the test needs
/// can be stuck behind that worker.
#[test]
fn a_deep_udp_receive_queue_is_reported_as_congestion() {
    use std::sync::atomic::Ordering;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stall = Arc::new(Stall::default());
    let mut registry = Registry::default();
    let transports = Arc::new(
        runtime
            .block_on(Transports::start(
                TransportConfig {
                    tcp: Vec::new(),
                    ..loopback()
                },
                stall.clone(),
                &mut registry,
            ))
            .unwrap(),
    );
    let _ = stall.transports.set(transports.clone());
    let to = transports.local_addr(Transport::Udp).unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"first", to).unwrap();
    wait_until(|| stall.messages.load(Ordering::SeqCst) == 1);
    assert!(
        !transports.receive_congested(),
        "an empty queue is no congestion"
    );

    // The loop is held up: fill its queue (what does not fit is dropped by the kernel).
    for _ in 0..20_000 {
        peer.send_to(&[b'x'; 64], to).unwrap();
    }
    *stall.released.lock().unwrap() = true;
    stall.wake.notify_all();
    let mut seen = 0;
    wait_until(|| {
        let before = seen;
        std::thread::sleep(Duration::from_millis(50));
        seen = stall.messages.load(Ordering::SeqCst);
        before == seen
    });
    assert!(seen > 100, "the queue held many datagrams ({seen})");
    assert!(
        stall.saw_congested.load(Ordering::SeqCst),
        "congestion was reported while the backlog was read"
    );
    assert!(!transports.receive_congested(), "caught up: no congestion");
    runtime.block_on(transports.shutdown());
}
