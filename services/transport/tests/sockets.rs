//! Socket tests on loopback, every wait bounded.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use trunkline_transport::{
    Inbound, Received, Target, Transport, TransportConfig, TransportError, Transports,
};

const WAIT: Duration = Duration::from_secs(5);

struct Collect {
    messages: mpsc::UnboundedSender<Received>,
    errors: Mutex<Vec<(Target, String)>>,
}

impl Inbound for Collect {
    fn on_message(&self, msg: Received) {
        let _ = self.messages.send(msg);
    }
    fn on_send_error(&self, target: Target, error: &TransportError) {
        self.errors
            .lock()
            .unwrap()
            .push((target, error.to_string()));
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

fn loopback() -> TransportConfig {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    TransportConfig {
        udp: vec![any],
        tcp: vec![any],
        ..TransportConfig::default()
    }
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
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
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
    assert_eq!(msg.peer, client.local_addr().unwrap());
    assert_eq!(msg.local, server);
    assert_eq!(msg.transport, Transport::Udp);
    assert_eq!(msg.connection, None);
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"oversize\"}"),
        1.0
    );

    node.transports.send(
        Target::reply_to(&msg),
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
    );
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
        udp: vec![any6],
        tcp: vec![any6],
        ..loopback()
    })
    .await;
    assert!(node.udp().is_ipv6() && node.udp().port() != 0);
    client
        .send_to(sip("").as_bytes(), node.udp())
        .await
        .unwrap();
    assert!(node.next().await.peer.is_ipv6());

    let mut stream = TcpStream::connect(node.tcp()).await.unwrap();
    stream.write_all(sip("v6").as_bytes()).await.unwrap();
    let msg = node.next().await;
    assert_eq!(msg.peer, stream.local_addr().unwrap());
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
    assert_eq!(first.connection, second.connection);
    assert!(first.connection.is_some());
    assert_eq!(first.peer, client.local_addr().unwrap());
    assert_eq!(first.local, node.tcp());

    let response = sip("response");
    node.transports
        .send(Target::reply_to(&first), Bytes::from(response.clone()));
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
    node.transports.send(
        Target::new(Transport::Tcp, trunk_addr),
        Bytes::from(request.clone()),
    );
    let (mut conn, _) = tokio::time::timeout(WAIT, trunk.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read_exact_in_time(&mut conn, request.len()).await,
        request.as_bytes()
    );

    // A second send to the same address reuses the connection.
    node.transports.send(
        Target::new(Transport::Tcp, trunk_addr),
        Bytes::from(request.clone()),
    );
    assert_eq!(
        read_exact_in_time(&mut conn, request.len()).await,
        request.as_bytes()
    );

    // The trunk's response comes back on the outbound connection.
    let response = sip("ok");
    conn.write_all(response.as_bytes()).await.unwrap();
    let msg = node.next().await;
    assert_eq!(msg.data, Bytes::from(response));
    assert_eq!(msg.peer, trunk_addr);
    assert!(msg.connection.is_some());
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
async fn refused_connect_is_reported() {
    let node = Node::start(loopback()).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    node.transports
        .send(Target::new(Transport::Tcp, closed), Bytes::from(sip("")));
    eventually(|| !node.inbound.errors.lock().unwrap().is_empty()).await;
    let (target, _) = node.inbound.errors.lock().unwrap()[0].clone();
    assert_eq!(target.addr, closed);
    assert_eq!(
        node.metric("trunkline_transport_dropped_total{reason=\"send_error\"}"),
        1.0
    );
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
async fn connection_limit_is_enforced() {
    let node = Node::start(TransportConfig {
        tcp_max_connections: 2,
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
        node.metric("trunkline_transport_dropped_total{reason=\"connection_limit\"}"),
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
    node.transports.send(
        Target::new(Transport::Udp, "127.0.0.1:9".parse().unwrap()),
        Bytes::from_static(b"x"),
    );
    assert_eq!(node.inbound.errors.lock().unwrap().len(), 1);
    assert_eq!(node.transports.local_addrs().len(), 2);
}

#[tokio::test]
async fn a_thousand_idle_connections_are_all_closed_and_freed() {
    let node = Node::start(TransportConfig {
        tcp_idle_timeout: Duration::from_millis(300),
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
