//! Our bound sockets as the layers above see them, and which one a send uses.

use std::net::SocketAddr;

use trunkline_sip::{Host, Peer, Transport};

use crate::config::ListenerConfig;
use crate::error::TransportError;

/// One bound socket (a UDP socket or a TCP listener) and how peers reach it.
///
/// The call layer builds Via and Contact from it: `advertise` and the port of `local`. A
/// message to a [`Peer`] leaves from the listener `Transports::listener_for` returns for it,
/// so the headers always describe the socket that really sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// UDP socket or TCP listener.
    pub transport: Transport,
    /// The bound address, with port 0 resolved to the real port. This is the value of
    /// `Peer::local` for messages received on it.
    pub local: SocketAddr,
    /// The host peers reach this socket at: the configured one, else the bound IP.
    pub advertise: Host,
}

impl Listener {
    /// The listener for a bound socket; fails for an unspecified address without an
    /// advertised host, which would put `0.0.0.0` into Via and Contact.
    pub(crate) fn new(
        transport: Transport,
        config: &ListenerConfig,
        local: SocketAddr,
    ) -> Result<Self, TransportError> {
        let advertise = match &config.advertise {
            Some(host) => host.clone(),
            None if local.ip().is_unspecified() => {
                return Err(TransportError::NoAdvertise {
                    transport,
                    addr: config.addr,
                })
            }
            None => Host::from(local.ip()),
        };
        Ok(Listener {
            transport,
            local,
            advertise,
        })
    }
}

/// Which listener a send to `peer` uses: the one `peer.local` names, else the first of the
/// peer's transport and address family.
///
/// `listeners` are all of one node's, in configuration order. Returns the index into them.
pub(crate) fn resolve(listeners: &[Listener], peer: &Peer) -> Result<usize, TransportError> {
    let same_transport = |l: &&Listener| l.transport == peer.transport;
    match peer.local {
        Some(local) => {
            let index = listeners
                .iter()
                .position(|l| l.transport == peer.transport && l.local == local)
                .ok_or(TransportError::UnknownLocal {
                    transport: peer.transport,
                    local,
                })?;
            if local.is_ipv4() != peer.addr.is_ipv4() {
                return Err(TransportError::FamilyMismatch {
                    local,
                    addr: peer.addr,
                });
            }
            Ok(index)
        }
        None => listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| same_transport(l))
            .find(|(_, l)| l.local.is_ipv4() == peer.addr.is_ipv4())
            .map(|(i, _)| i)
            .ok_or(TransportError::NoSocket {
                transport: peer.transport,
                addr: peer.addr,
            }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn listener(transport: Transport, local: &str) -> Listener {
        let local: SocketAddr = local.parse().unwrap();
        Listener::new(transport, &ListenerConfig::new(local), local).unwrap()
    }

    #[test]
    fn named_socket_else_first_of_the_family() {
        let all = [
            listener(Transport::Udp, "127.0.0.1:5060"),
            listener(Transport::Udp, "[::1]:5060"),
            listener(Transport::Udp, "127.0.0.2:5060"),
            listener(Transport::Tcp, "127.0.0.2:5060"),
        ];
        let to = |t, addr: &str, local: Option<&str>| Peer {
            local: local.map(|l| l.parse().unwrap()),
            ..Peer::new(t, addr.parse().unwrap())
        };
        assert_eq!(
            resolve(&all, &to(Transport::Udp, "192.0.2.1:5060", None)).unwrap(),
            0
        );
        assert_eq!(
            resolve(&all, &to(Transport::Udp, "[2001:db8::1]:5060", None)).unwrap(),
            1
        );
        assert_eq!(
            resolve(
                &all,
                &to(Transport::Udp, "192.0.2.1:5060", Some("127.0.0.2:5060"))
            )
            .unwrap(),
            2
        );
        assert_eq!(
            resolve(&all, &to(Transport::Tcp, "192.0.2.1:5060", None)).unwrap(),
            3
        );
        assert!(matches!(
            resolve(
                &all,
                &to(Transport::Tcp, "192.0.2.1:5060", Some("127.0.0.1:5060"))
            ),
            Err(TransportError::UnknownLocal { .. })
        ));
        assert!(matches!(
            resolve(
                &all,
                &to(Transport::Udp, "[2001:db8::1]:5060", Some("127.0.0.2:5060"))
            ),
            Err(TransportError::FamilyMismatch { .. })
        ));
        assert!(matches!(
            resolve(&all, &to(Transport::Tcp, "[2001:db8::1]:5060", None)),
            Err(TransportError::NoSocket { .. })
        ));
    }

    #[test]
    fn advertise_defaults_to_the_bound_ip_but_never_a_wildcard() {
        let bound: SocketAddr = "127.0.0.2:5062".parse().unwrap();
        let l = Listener::new(Transport::Udp, &ListenerConfig::new(bound), bound).unwrap();
        assert_eq!(l.advertise, Host::parse("127.0.0.2").unwrap());
        let any: SocketAddr = "0.0.0.0:5060".parse().unwrap();
        assert!(matches!(
            Listener::new(Transport::Tcp, &ListenerConfig::new(any), any),
            Err(TransportError::NoAdvertise { .. })
        ));
        let host = Host::parse("sbc.example.net").unwrap();
        let l = Listener::new(
            Transport::Tcp,
            &ListenerConfig::advertised(any, host.clone()),
            any,
        )
        .unwrap();
        assert_eq!(l.advertise, host);
    }
}
