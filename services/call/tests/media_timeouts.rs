//! The media actor and the relay's timeouts, on tokio's paused clock (the node's one
//! clock): a call that rings for longer than the inactivity timeout is not hung up for want of media;
//! once the call actor says it is established, the timeout runs from then and the actor is
//! told which timeout fired. No packets flow; virtual minutes pass in no time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use trunkline_b2bua::{Leg, MediaOp};
use trunkline_call::media::{self, LegAddressing, LegInterfaces, MediaControl, Rewrite};
use trunkline_call::messages::CallMsg;
use trunkline_media::{MediaConfig, Relay, TimeoutReason};

const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Stands in for the call actor: forwards what the media actor sends it to the test.
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

fn audio(port: u16) -> Bytes {
    Bytes::from(format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\n"
    ))
}

#[tokio::test(start_paused = true)]
async fn ringing_is_not_timed_out_and_established_calls_are() {
    let relay = Relay::start(
        MediaConfig {
            port_min: 24600,
            port_max: 24639,
            workers: 1,
            timeout: Duration::from_secs(60),
            ..MediaConfig::default()
        },
        None,
    )
    .unwrap();
    let control = MediaControl::new(relay);
    let media = media::spawn(control.clone()).await.unwrap();
    let (tx, mut replies) = mpsc::unbounded_channel();
    let (me, _) = Actor::spawn(None, Replies, tx).await.unwrap();
    let key: Arc<str> = Arc::from("ringing-call");
    let interfaces = LegInterfaces::default();
    let rewrite = |op, sdp: &Bytes| {
        let req = Rewrite {
            op,
            sdp,
            caller_source: SocketAddr::new(LO, 5060),
            callee_source: None,
            interfaces: &interfaces,
            addressing: LegAddressing::default(),
        };
        control.rewrite(&key, &req, &me)
    };
    // The INVITE's offer, then a 183's answer (early media that never comes).
    assert!(rewrite(MediaOp::Offer { from: Leg::A }, &audio(4000)).is_ok());
    assert!(rewrite(MediaOp::Answer { offerer: Leg::A }, &audio(4002)).is_ok());
    // Ten minutes of ringing, ten times the inactivity timeout: nothing.
    let rang = tokio::time::timeout(Duration::from_secs(600), replies.recv()).await;
    assert!(rang.is_err(), "a ringing call got {rang:?}");

    // Answered: the timeout runs from now.
    control.established(&key);
    let start = tokio::time::Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(120), replies.recv())
        .await
        .expect("timed out after the answer")
        .unwrap();
    assert!(
        matches!(
            msg,
            CallMsg::MediaTimeout {
                reason: TimeoutReason::NoMedia
            }
        ),
        "{msg:?}"
    );
    let after = start.elapsed();
    assert!(
        after >= Duration::from_secs(60) && after <= Duration::from_secs(62),
        "reported {after:?} after the answer (timeout 60 s, polled once a second)"
    );
    control.delete(&key);
    me.stop(None);
    media.stop(None);
}
