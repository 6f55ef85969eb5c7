//! Static routing: named trunks, prefix routes on the dialled number, a default route.
//!
//! `Router::decide` is a pure function of the Request-URI and where the call came from,
//! so every routing rule is a unit test. Least-cost routing, failover and RFC 3263
//! resolution come later; this shape stays.

use crate::trust::{Origin, Source};
use std::net::SocketAddr;
use std::sync::Arc;
use trunkline_media::AddressPolicy;
use trunkline_sip::{Host, Peer, SipUri, Transport, Uri};

/// Why a number the node calls on an operator's behalf has no trunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no trunk named {0:?}")]
    UnknownTrunk(String),
    #[error("no route for {0:?}")]
    NoRoute(String),
}

/// A carrier interconnect the node sends calls to, and takes calls from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Addresses the trunk's requests come from; calls from these are the trunk's.
    pub sources: Vec<Source>,
    /// Anchor the RTP of calls to this trunk on the node's relay.
    pub anchor_media: bool,
    /// The relay interface this trunk's media (the B leg) is anchored on, by name; `None`:
    /// the relay's default. Carriers are often reached on another network than callers.
    pub media_interface: Option<Arc<str>>,
    /// The trunk is a PBX behind NAT: follow its source address where its Contact is
    /// private (see `RouteDecision::Trunk::fix_nated_contact`).
    pub fix_nated_contact: bool,
    /// How the trunk's SDP addresses are read (the relay's `AddressPolicy`): as written
    /// (`Sdp`, the default: carriers mean what they write), the signalling source
    /// (`Source`), or the SDP address unless the node cannot reach it (`Auto`, for a PBX
    /// behind NAT). Applies to the trunk's leg of calls to it and from it.
    pub media_address: AddressPolicy,
    /// The node's socket the trunk is reached from (`None`: the first listener of the
    /// trunk's transport): on a multi-homed node, the one on the carrier's network.
    pub local: Option<SocketAddr>,
    /// Calls up at once and per second, from the trunk and to it.
    pub limits: crate::limits::TrunkLimits,
    /// Digest credentials that identify the trunk's calls wherever they come from.
    pub credentials: Option<crate::digest::Credentials>,
    /// What the node answers the trunk's own digest challenges with.
    pub outbound_credentials: Option<trunkline_b2bua::PeerCredentials>,
    /// The trunk wants the node to REGISTER to it (`None`: it does not).
    pub register: Option<crate::registration::RegisterConfig>,
    /// How a TLS trunk is connected to and what its own connections must show (`None`
    /// for UDP and TCP trunks).
    pub tls: Option<crate::tls::TrunkTls>,
    /// The trunk is named by DNS (RFC 3263): `addr` is then the best of `targets`, the
    /// last answer (unspecified until there is one).
    pub dns: Option<crate::dns::DnsName>,
    pub targets: Arc<[crate::dns::Target]>,
    /// Number rewriting for calls from the trunk and to it.
    pub rewrites: crate::rewrite::Rewrites,
    /// The trunk is in the node's trust domain (RFC 3325): its `P-Asserted-Identity` is
    /// believed and relayed, and identities kept private may be shown to it.
    pub trusted_identity: bool,
    /// OPTIONS pings that tell whether routing may use the trunk (`None`: never pinged,
    /// always up).
    pub health: Option<crate::health::HealthConfig>,
}

impl Trunk {
    /// A UDP trunk at `addr` whose calls come from exactly `addr`, every other setting
    /// at its default.
    pub fn plain(name: &str, addr: SocketAddr) -> Trunk {
        Trunk {
            name: name.into(),
            addr,
            transport: Transport::Udp,
            sources: vec![Source::Exact(addr)],
            anchor_media: true,
            media_interface: None,
            fix_nated_contact: false,
            media_address: AddressPolicy::Sdp,
            local: None,
            limits: Default::default(),
            credentials: None,
            outbound_credentials: None,
            register: None,
            tls: None,
            dns: None,
            targets: Arc::from(Vec::new()),
            rewrites: Default::default(),
            trusted_identity: false,
            health: None,
        }
    }

    /// The peer the B-leg INVITE goes to.
    pub fn peer(&self) -> Peer {
        Peer {
            local: self.local,
            ..Peer::new(self.transport, self.addr)
        }
    }

    /// The B-leg Request-URI: the dialled user at the trunk (at its name, for a trunk
    /// named by DNS: RFC 3263 resolves the URI's host).
    pub fn request_uri(&self, dialled: Option<&str>) -> Uri {
        let (host, port) = match &self.dns {
            Some(n) => (Host::Domain(n.host.to_string()), n.port),
            None => (Host::from(self.addr.ip()), Some(self.addr.port())),
        };
        let mut uri = SipUri::new(dialled.map(str::to_string), host, port);
        if let Some(t) = self.transport.uri_param() {
            uri.set_param("transport", Some(t.to_string()));
        }
        Uri::Sip(uri)
    }
}

/// `[[routes]]`: calls whose dialled number starts with `prefix` go to `trunk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub trunk: String,
}

/// The trunks, routes and trust rules in force: what a new call is classified and
/// routed with. The node swaps in a whole new one when an operator changes trunks or
/// routes; a call keeps the one it started with, so a change never touches calls in
/// progress.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub router: Router,
    pub trust: crate::trust::Trust,
}

/// Picks the trunk for a call.
#[derive(Debug, Clone, Default)]
pub struct Router {
    trunks: Vec<Trunk>,
    /// (prefix, trunk index), longest prefix first.
    routes: Vec<(String, usize)>,
    default: Option<usize>,
}

/// Why a router was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("default route names trunk {0:?}, which is not configured")]
    UnknownDefault(String),
    #[error("route for prefix {prefix:?} names trunk {trunk:?}, which is not configured")]
    UnknownTrunk { prefix: String, trunk: String },
    #[error("prefix {0:?} is routed twice")]
    DuplicatePrefix(String),
    #[error("trunk {0:?} is configured twice")]
    Duplicate(String),
}

impl Router {
    pub fn new(
        trunks: Vec<Trunk>,
        routes: Vec<Route>,
        default: Option<&str>,
    ) -> Result<Router, RouterError> {
        for (i, t) in trunks.iter().enumerate() {
            if trunks[..i].iter().any(|o| o.name == t.name) {
                return Err(RouterError::Duplicate(t.name.to_string()));
            }
        }
        let index = |name: &str| trunks.iter().position(|t| &*t.name == name);
        let default = match default {
            Some(name) => {
                Some(index(name).ok_or_else(|| RouterError::UnknownDefault(name.to_string()))?)
            }
            None => None,
        };
        let mut table = Vec::with_capacity(routes.len());
        for r in routes {
            if table.iter().any(|(p, _)| *p == r.prefix) {
                return Err(RouterError::DuplicatePrefix(r.prefix));
            }
            let i = index(&r.trunk).ok_or_else(|| RouterError::UnknownTrunk {
                prefix: r.prefix.clone(),
                trunk: r.trunk.clone(),
            })?;
            table.push((r.prefix, i));
        }
        table.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Router {
            trunks,
            routes: table,
            default,
        })
    }

    /// This table with the named trunks' targets from `table`: each one's `addr` is its
    /// best target (of the lowest priority), unspecified while it has none.
    pub fn with_dns(&self, table: &crate::dns::DnsTable) -> Router {
        let mut out = self.clone();
        for t in out.trunks.iter_mut() {
            let Some(name) = &t.dns else { continue };
            t.targets = table.targets(name);
            t.addr = crate::dns::pick(&t.targets, |_| false, 0).map_or_else(
                || SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                |best| best.addr,
            );
        }
        out
    }

    /// The named trunks' names.
    pub fn dns_names(&self) -> Vec<crate::dns::DnsName> {
        let mut names: Vec<_> = self.trunks.iter().filter_map(|t| t.dns.clone()).collect();
        names.dedup();
        names
    }

    /// The trunk whose digest user is `username`, and its credentials.
    pub fn by_username(&self, username: &str) -> Option<(usize, &crate::digest::Credentials)> {
        self.trunks.iter().enumerate().find_map(|(i, t)| {
            t.credentials
                .as_ref()
                .filter(|c| c.username == username)
                .map(|c| (i, c))
        })
    }

    /// Whether any trunk may identify its calls by digest credentials.
    pub fn has_credentials(&self) -> bool {
        self.trunks.iter().any(|t| t.credentials.is_some())
    }

    /// The trunk for a call to `request_uri` from `origin`: the longest prefix of the
    /// dialled number with a route, else the default. A call that came from a trunk is
    /// never sent back to that same trunk (a loop between two carriers that each
    /// default to the other would otherwise bounce until Max-Forwards runs out, and a
    /// carrier could use the node to reach its own network at someone's expense).
    /// `None`: no route (the caller gets 404).
    pub fn decide(&self, request_uri: &Uri, origin: Origin) -> Option<&Trunk> {
        self.route_number(request_uri.user().unwrap_or_default(), origin.trunk())
    }

    /// The trunk a call the node makes itself goes through (a transfer target, a party of
    /// a call it places): `trunk` by name, else the route of `number`. No trunk is
    /// excluded: the node is the caller.
    pub fn target(&self, number: &str, trunk: Option<&str>) -> Result<&Trunk, TargetError> {
        match trunk {
            Some(name) => self
                .trunks
                .iter()
                .find(|t| &*t.name == name)
                .ok_or_else(|| TargetError::UnknownTrunk(name.to_string())),
            None => self
                .route_number(number, None)
                .ok_or_else(|| TargetError::NoRoute(number.to_string())),
        }
    }

    /// As [`Router::decide`], skipping trunks `is_up` says are down: the longest prefix
    /// route whose trunk is up, then shorter ones, then the default. `Err(true)`: routes
    /// matched but every trunk of them is down (the caller gets 503, not 404).
    pub fn decide_up(
        &self,
        request_uri: &Uri,
        origin: Origin,
        is_up: impl Fn(&Trunk) -> bool,
    ) -> Result<&Trunk, bool> {
        let candidates = self.candidates(request_uri.user().unwrap_or_default(), origin.trunk());
        let mut any = false;
        for t in candidates {
            any = true;
            if is_up(t) {
                return Ok(t);
            }
        }
        Err(any)
    }

    fn route_number(&self, dialled: &str, from: Option<usize>) -> Option<&Trunk> {
        self.candidates(dialled, from).next()
    }

    /// The trunks a call to `dialled` may take, in order: the routes whose prefix it
    /// starts with (longest first), then the default; never trunk `from`.
    fn candidates<'a, 'd>(
        &'a self,
        dialled: &'d str,
        from: Option<usize>,
    ) -> impl Iterator<Item = &'a Trunk> + use<'a, 'd> {
        self.routes
            .iter()
            .filter(move |(prefix, _)| dialled.starts_with(prefix.as_str()))
            .map(|(_, i)| *i)
            .chain(self.default)
            .filter(move |i| Some(*i) != from)
            .filter_map(|i| self.trunks.get(i))
    }

    pub fn trunks(&self) -> &[Trunk] {
        &self.trunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, addr: &str) -> Trunk {
        Trunk {
            sources: Vec::new(),
            ..Trunk::plain(name, addr.parse().unwrap())
        }
    }

    #[test]
    fn a_trunk_that_is_down_is_skipped_for_shorter_routes_then_the_default() {
        let r = Router::new(
            vec![
                trunk("uk", "192.0.2.1:5060"),
                trunk("europe", "192.0.2.2:5060"),
                trunk("carrier", "192.0.2.3:5060"),
            ],
            vec![route("+44", "uk"), route("+4", "europe")],
            Some("carrier"),
        )
        .unwrap();
        let uri = |s: &str| Uri::parse(s).unwrap();
        let to_uk = uri("sip:+442071234567@192.0.2.9");
        let up = |down: &'static [&'static str]| move |t: &Trunk| !down.contains(&&*t.name);
        let pick = |down| {
            r.decide_up(&to_uk, Origin::Access, up(down))
                .map(|t| &*t.name)
        };
        assert_eq!(pick(&[]), Ok("uk"));
        assert_eq!(pick(&["uk"]), Ok("europe"));
        assert_eq!(pick(&["uk", "europe"]), Ok("carrier"));
        assert_eq!(pick(&["uk", "europe", "carrier"]), Err(true));
        let nowhere = Router::new(
            vec![trunk("uk", "192.0.2.1:5060")],
            vec![route("+44", "uk")],
            None,
        )
        .unwrap();
        let to_us = uri("sip:+15550100@192.0.2.9");
        assert_eq!(
            nowhere
                .decide_up(&to_us, Origin::Access, |_| true)
                .map(|t| &*t.name),
            Err(false)
        );
    }

    fn route(prefix: &str, trunk: &str) -> Route {
        Route {
            prefix: prefix.into(),
            trunk: trunk.into(),
        }
    }

    fn uri(s: &str) -> Uri {
        Uri::parse(s).unwrap()
    }

    fn picked<'a>(r: &'a Router, to: &str, origin: Origin) -> Option<&'a str> {
        r.decide(&uri(to), origin).map(|t| &*t.name)
    }

    #[test]
    fn longest_prefix_then_default() {
        let r = Router::new(
            vec![
                trunk("world", "192.0.2.1:5060"),
                trunk("uk", "192.0.2.2:5060"),
                trunk("london", "192.0.2.3:5060"),
            ],
            vec![route("+44", "uk"), route("+4420", "london")],
            Some("world"),
        )
        .unwrap();
        assert_eq!(
            picked(&r, "sip:+442071234567@x", Origin::Access),
            Some("london")
        );
        assert_eq!(
            picked(&r, "sip:+441611234567@x", Origin::Access),
            Some("uk")
        );
        assert_eq!(picked(&r, "sip:+15551234@x", Origin::Access), Some("world"));
        assert_eq!(picked(&r, "sip:x.example", Origin::Access), Some("world"));
    }

    #[test]
    fn a_call_never_goes_back_to_the_trunk_it_came_from() {
        let r = Router::new(
            vec![
                trunk("world", "192.0.2.1:5060"),
                trunk("uk", "192.0.2.2:5060"),
                trunk("london", "192.0.2.3:5060"),
            ],
            vec![route("+44", "uk"), route("+4420", "london")],
            Some("world"),
        )
        .unwrap();
        // From london to a london number: the next shorter prefix.
        assert_eq!(
            picked(&r, "sip:+442071234567@x", Origin::Trunk(2)),
            Some("uk")
        );
        // From uk to a uk number: past the prefix routes to the default.
        assert_eq!(
            picked(&r, "sip:+441611234567@x", Origin::Trunk(1)),
            Some("world")
        );
        // From the default trunk to a number only the default serves: no route.
        assert_eq!(picked(&r, "sip:+15551234@x", Origin::Trunk(0)), None);
    }

    #[test]
    fn no_default_no_route() {
        let r = Router::new(
            vec![trunk("uk", "192.0.2.2:5060")],
            vec![route("+44", "uk")],
            None,
        )
        .unwrap();
        assert_eq!(picked(&r, "sip:+15551234@x", Origin::Access), None);
        assert!(Router::default()
            .decide(&uri("sip:1@x"), Origin::Access)
            .is_none());
    }

    #[test]
    fn refuses_configurations_that_name_nothing() {
        let t = || vec![trunk("uk", "192.0.2.2:5060")];
        assert_eq!(
            Router::new(t(), vec![], Some("x")).unwrap_err(),
            RouterError::UnknownDefault("x".into())
        );
        assert_eq!(
            Router::new(t(), vec![route("+1", "us")], None).unwrap_err(),
            RouterError::UnknownTrunk {
                prefix: "+1".into(),
                trunk: "us".into()
            }
        );
        assert_eq!(
            Router::new(t(), vec![route("+44", "uk"), route("+44", "uk")], None).unwrap_err(),
            RouterError::DuplicatePrefix("+44".into())
        );
        let mut two = t();
        two.push(trunk("uk", "192.0.2.9:5060"));
        assert_eq!(
            Router::new(two, vec![], None).unwrap_err(),
            RouterError::Duplicate("uk".into())
        );
    }

    #[test]
    fn request_uri_names_the_trunk() {
        let mut t = trunk("carrier", "127.0.0.1:5090");
        t.transport = Transport::Tcp;
        assert_eq!(
            t.request_uri(Some("+15551234")).to_string(),
            "sip:+15551234@127.0.0.1:5090;transport=tcp"
        );
    }
}
