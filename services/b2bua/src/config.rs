//! What a call needs to know about the node it runs on.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use trunkline_sip::transaction::Timers;
use trunkline_sip::{Host, NameAddr, SipUri, Transport, Uri, Via};

/// Node-wide call settings, shared by every call on a node.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Carried in every identifier the node generates (ARCHITECTURE.md rule 3).
    pub node_id: String,
    pub timers: Timers,
    /// Max-Forwards for requests we originate (in-dialog requests toward a leg).
    pub max_forwards: u32,
    /// Ring time before the call is abandoned with CANCEL toward the callee.
    pub no_answer: Duration,
    /// Value of the Allow header we advertise.
    pub allow: &'static str,
    /// What the caller hears when the trunk answers 503. Relayed as it is, a 503 (with
    /// the trunk's Retry-After) tells the caller's side that *this node* is out of
    /// service, and carriers blacklist the whole node for it; 500 says the call failed.
    pub trunk_503_status: u16,
    /// Longest an answered call may last before the node hangs it up (toll-fraud and
    /// stuck-call guard); `None`: no limit.
    pub max_duration: Option<Duration>,
    /// Keep the last SDP each party sent, for the call's snapshot (cluster mode: an
    /// adopter offers each party the other's session). Off on a standalone node, where
    /// nothing would read them.
    pub keep_sdp: bool,
    /// Final statuses of the callee's trunk (408 also stands for a timeout, 503 for a
    /// transport error) after which a call whose route has another trunk tries that one
    /// instead of answering the caller. Never a 2xx; by default 408 and every 5xx, so a
    /// 486, 603 or 404 is the callee's answer and ends the call.
    pub failover_statuses: Vec<u16>,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            node_id: "n1".into(),
            timers: Timers::default(),
            max_forwards: 70,
            no_answer: Duration::from_secs(180),
            allow: "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, MESSAGE, NOTIFY",
            trunk_503_status: 500,
            max_duration: None,
            keep_sdp: false,
            failover_statuses: std::iter::once(408).chain(500..600).collect(),
        }
    }
}

/// Our own address on one leg: what goes into Via and Contact toward that side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Local {
    pub transport: Transport,
    pub host: Host,
    pub port: u16,
}

impl Local {
    /// A Via for a request we send on this leg.
    pub fn via(&self, branch: String) -> Via {
        let mut via = Via::new(
            self.transport.via_token(),
            self.host.clone(),
            Some(self.port),
            branch,
        );
        if self.transport == trunkline_sip::Transport::Tls {
            // RFC 5923: the peer may send its requests back over this connection
            // instead of opening one to our listener.
            via.set_param("alias", None);
        }
        via
    }

    /// Our Contact on this leg. Endpoints send their in-dialog requests here, which
    /// is what makes the node, not the far side, the next hop of each leg.
    pub fn contact(&self) -> NameAddr {
        let mut uri = SipUri::new(None, self.host.clone(), Some(self.port));
        if let Some(t) = self.transport.uri_param() {
            uri.set_param("transport", Some(t.to_string()));
        }
        NameAddr::new(Uri::Sip(uri))
    }
}

/// The username and password the node answers a peer's digest challenge with (a
/// carrier that authenticates its customers' calls and BYEs).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for PeerCredentials {
    // The password stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the callee's side is shown of the caller, decided with the route: the numbers
/// after the trunks' rewrite rules, and what RFC 3325 lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presentation {
    /// The user of the B-leg From (`None`: the caller's From user).
    pub from_user: Option<String>,
    /// The user of the B-leg To (`None`: the Request-URI's user).
    pub to_user: Option<String>,
    /// The caller's `P-Asserted-Identity` comes from a trunk trusted to assert one:
    /// relay it (from anyone else it is dropped, RFC 3325 §5).
    pub assert_identity: bool,
    /// The callee's trunk is in the trust domain: an asserted identity the caller asked
    /// to keep private (`Privacy: id`) may still go to it; toward any other trunk it is
    /// removed.
    pub callee_trusted: bool,
}
