//! Static routing: named trunks from configuration and a default route.
//!
//! Prefix and least-cost routing, failover and RFC 3263 resolution come later; the
//! shape (a pure decision from the Request-URI to a trunk) stays.

use std::net::SocketAddr;
use std::sync::Arc;
use trunkline_sip::{Host, Peer, SipUri, Transport, Uri};

/// A carrier interconnect the node sends calls to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    pub name: String,
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Anchor the RTP of calls to this trunk on the node's relay.
    pub anchor_media: bool,
    /// The relay interface this trunk's media (the B leg) is anchored on, by name; `None`:
    /// the relay's default. Carriers are often reached on another network than callers.
    pub media_interface: Option<Arc<str>>,
    /// The trunk is a PBX behind NAT: follow its source address where its Contact is
    /// private (see `RouteDecision::Trunk::fix_nated_contact`).
    pub fix_nated_contact: bool,
}

impl Trunk {
    /// The peer the B-leg INVITE goes to.
    pub fn peer(&self) -> Peer {
        Peer::new(self.transport, self.addr)
    }

    /// The B-leg Request-URI: the dialled user at the trunk.
    pub fn request_uri(&self, dialled: Option<&str>) -> Uri {
        let mut uri = SipUri::new(
            dialled.map(str::to_string),
            Host::from(self.addr.ip()),
            Some(self.addr.port()),
        );
        if let Some(t) = self.transport.uri_param() {
            uri.set_param("transport", Some(t.to_string()));
        }
        Uri::Sip(uri)
    }
}

/// Picks the trunk for a call.
#[derive(Debug, Clone, Default)]
pub struct Router {
    trunks: Vec<Trunk>,
    default: Option<usize>,
}

/// Why a router was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("default route names trunk {0:?}, which is not configured")]
    UnknownDefault(String),
    #[error("trunk {0:?} is configured twice")]
    Duplicate(String),
}

impl Router {
    pub fn new(trunks: Vec<Trunk>, default: Option<&str>) -> Result<Router, RouterError> {
        for (i, t) in trunks.iter().enumerate() {
            if trunks[..i].iter().any(|o| o.name == t.name) {
                return Err(RouterError::Duplicate(t.name.clone()));
            }
        }
        let default = match default {
            Some(name) => Some(
                trunks
                    .iter()
                    .position(|t| t.name == name)
                    .ok_or_else(|| RouterError::UnknownDefault(name.to_string()))?,
            ),
            None => None,
        };
        Ok(Router { trunks, default })
    }

    /// The trunk for a Request-URI, or `None` (the caller gets 404).
    pub fn route(&self, _request_uri: &Uri) -> Option<&Trunk> {
        self.default.and_then(|i| self.trunks.get(i))
    }

    pub fn trunks(&self) -> &[Trunk] {
        &self.trunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_and_request_uri() {
        let t = Trunk {
            name: "carrier".into(),
            addr: "127.0.0.1:5090".parse().unwrap(),
            transport: Transport::Tcp,
            anchor_media: true,
            media_interface: Some(Arc::from("carrier")),
            fix_nated_contact: false,
        };
        let r = Router::new(vec![t.clone()], Some("carrier")).unwrap();
        let uri = Uri::parse("sip:+15551234@example.com").unwrap();
        assert_eq!(r.route(&uri), Some(&t));
        assert_eq!(
            t.request_uri(uri.user()).to_string(),
            "sip:+15551234@127.0.0.1:5090;transport=tcp"
        );
        assert!(Router::new(vec![], None).unwrap().route(&uri).is_none());
        assert_eq!(
            Router::new(vec![], Some("x")).unwrap_err(),
            RouterError::UnknownDefault("x".into())
        );
    }
}
