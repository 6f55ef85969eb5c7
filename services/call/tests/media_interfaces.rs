//! The relay's control anchors each leg of a call on the interface the call actor names for it:
//! the caller's (A) on the access interface, the trunk's (B) on the trunk's, through the
//! first offer and answer and through re-offers from either side. A real relay on two
//! loopback addresses (127.0.0.0/8 is all loopback on Linux) stands between a caller socket
//! on 127.0.0.1 and a callee socket on 127.0.0.3; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use trunkline_b2bua::{Leg, MediaFailure, MediaOp};
use trunkline_call::media::{self, LegInterfaces, MediaControl, Rewrite};
use trunkline_call::messages::CallMsg;
use trunkline_media::{MediaConfig, MediaInterface, Relay, DEFAULT_INTERFACE};

const ACCESS: &str = "127.0.0.1";
const CARRIER: &str = "127.0.0.2";
const CALLEE: &str = "127.0.0.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The node's relay with the default interface (access side) and `carrier`. Each test has
/// its own port window, below the kernel's ephemeral range.
fn media_control(window: u16) -> Arc<MediaControl> {
    let port_min = 24800 + window * 40;
    let relay = Relay::start(
        MediaConfig {
            interfaces: vec![
                MediaInterface::new(DEFAULT_INTERFACE, ip(ACCESS), ip(ACCESS)),
                MediaInterface::new("carrier", ip(CARRIER), ip(CARRIER)),
            ],
            port_min,
            port_max: port_min + 39,
            workers: 1,
            ..MediaConfig::default()
        },
        None,
    )
    .unwrap();
    MediaControl::new(relay)
}

/// Stands in for the call actor, the owner of the relay session.
struct Replies;

impl Actor for Replies {
    type Msg = CallMsg;
    type State = mpsc::UnboundedSender<CallMsg>;
    type Arguments = mpsc::UnboundedSender<CallMsg>;

    async fn pre_start(
        &self,
        _myself: ActorRef<CallMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<CallMsg>,
        msg: CallMsg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg);
        Ok(())
    }
}

/// One call as its call actor would drive the relay.
struct Call {
    media: Arc<MediaControl>,
    key: Arc<str>,
    interfaces: LegInterfaces,
    owner: ActorRef<CallMsg>,
}

impl Call {
    async fn new(media: &Arc<MediaControl>, key: &str, interfaces: LegInterfaces) -> Call {
        let (tx, _replies) = mpsc::unbounded_channel();
        let (owner, _) = Actor::spawn(None, Replies, tx).await.unwrap();
        Call {
            media: media.clone(),
            key: Arc::from(key),
            interfaces,
            owner,
        }
    }

    /// Anchors `sdp` as `op`; returns its rewrite.
    fn rewrite(&mut self, op: MediaOp, sdp: Vec<u8>) -> Result<Bytes, MediaFailure> {
        let req = Rewrite {
            op,
            sdp: &sdp,
            caller_source: SocketAddr::new(ip(ACCESS), 5070),
            callee_source: None,
            interfaces: &self.interfaces,
            addressing: media::LegAddressing::default(),
        };
        self.media.rewrite(&self.key, &req, &self.owner)
    }

    /// The relay address (connection, audio port) `op`'s rewrite of `sdp` names.
    fn anchor(&mut self, op: MediaOp, sdp: Vec<u8>) -> SocketAddr {
        let body = self.rewrite(op, sdp).expect("anchored");
        relay_addr(&body)
    }

    fn end(&self) {
        self.media.delete(&self.key);
        self.owner.stop(None);
    }
}

fn audio(addr: SocketAddr, version: u32) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
    .into_bytes()
}

fn relay_addr(body: &[u8]) -> SocketAddr {
    let text = std::str::from_utf8(body).unwrap();
    let c = text
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap_or_else(|| panic!("no c= in {text}"));
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split_whitespace().next())
        .unwrap_or_else(|| panic!("no m=audio in {text}"));
    SocketAddr::new(ip(c.trim()), port.parse().unwrap())
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678_u32.to_be_bytes());
    p.extend_from_slice(&[0xff; 160]);
    p
}

/// Sends one RTP packet from `from` to `to` and returns where `at` received it from.
async fn relayed(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, seq: u16) -> SocketAddr {
    from.send_to(&rtp(seq), to).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, source) = tokio::time::timeout(Duration::from_secs(2), at.recv_from(&mut buf))
        .await
        .expect("the relay forwards the packet")
        .unwrap();
    assert_eq!(n, 172);
    source
}

#[tokio::test]
async fn each_leg_stays_on_its_interface_through_re_offers() {
    let media = media_control(0);
    let caller = UdpSocket::bind((ip(ACCESS), 0)).await.unwrap();
    let callee = UdpSocket::bind((ip(CALLEE), 0)).await.unwrap();
    let (a_sdp, b_sdp) = (caller.local_addr().unwrap(), callee.local_addr().unwrap());
    let mut call = Call::new(
        &media,
        "ifaces-1",
        LegInterfaces {
            a: None,
            b: Some(Arc::from("carrier")),
        },
    )
    .await;

    // The INVITE toward the trunk names the carrier side, the 200 toward the caller the
    // access side.
    let to_b = call.anchor(MediaOp::Offer { from: Leg::A }, audio(a_sdp, 1));
    assert_eq!(to_b.ip(), ip(CARRIER), "offer sent to the trunk");
    let to_a = call.anchor(MediaOp::Answer { offerer: Leg::A }, audio(b_sdp, 1));
    assert_eq!(to_a.ip(), ip(ACCESS), "answer sent to the caller");

    // Media both ways, each leg's packets leaving from that leg's interface.
    assert_eq!(relayed(&caller, to_a, &callee, 1).await, to_b);
    assert_eq!(relayed(&callee, to_b, &caller, 1).await, to_a);

    // A re-INVITE from the trunk, then one from the caller: no leg moves.
    let b_reoffer = call.anchor(MediaOp::Offer { from: Leg::B }, audio(b_sdp, 2));
    assert_eq!(b_reoffer, to_a, "callee's re-offer sent to the caller");
    let a_reanswer = call.anchor(MediaOp::Answer { offerer: Leg::B }, audio(a_sdp, 2));
    assert_eq!(a_reanswer, to_b, "caller's answer sent to the trunk");
    let a_reoffer = call.anchor(MediaOp::Offer { from: Leg::A }, audio(a_sdp, 3));
    assert_eq!(a_reoffer, to_b, "caller's re-offer sent to the trunk");
    let b_reanswer = call.anchor(MediaOp::Answer { offerer: Leg::A }, audio(b_sdp, 3));
    assert_eq!(b_reanswer, to_a, "callee's answer sent to the caller");

    assert_eq!(relayed(&caller, to_a, &callee, 2).await, to_b);
    assert_eq!(relayed(&callee, to_b, &caller, 2).await, to_a);
    call.end();
    media.relay().shutdown();
}

#[tokio::test]
async fn the_access_side_can_be_named_and_unknown_names_fail_the_offer() {
    let media = media_control(1);
    let caller = SocketAddr::new(ip(ACCESS), 40000);
    let callee = SocketAddr::new(ip(CALLEE), 40002);
    // Callers on `carrier`, the trunk on the default interface: the other way round.
    let mut call = Call::new(
        &media,
        "ifaces-2",
        LegInterfaces {
            a: Some(Arc::from("carrier")),
            b: None,
        },
    )
    .await;
    let to_b = call.anchor(MediaOp::Offer { from: Leg::A }, audio(caller, 1));
    assert_eq!(to_b.ip(), ip(ACCESS));
    let to_a = call.anchor(MediaOp::Answer { offerer: Leg::A }, audio(callee, 1));
    assert_eq!(to_a.ip(), ip(CARRIER));
    call.end();

    // A name the relay does not have (configuration validation keeps it from happening):
    // the offer fails as a 503, so the caller can try another node.
    let mut call = Call::new(
        &media,
        "ifaces-3",
        LegInterfaces {
            a: None,
            b: Some(Arc::from("dmz")),
        },
    )
    .await;
    let refused = call.rewrite(MediaOp::Offer { from: Leg::A }, audio(caller, 1));
    assert_eq!(refused, Err(MediaFailure { status: 503 }));
    call.end();
    media.relay().shutdown();
}
