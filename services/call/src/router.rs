//! Routing: named trunks, prefix routes on the dialled number (each to a list of trunks
//! by priority and weight, optionally only for calls from one trunk), a default trunk.
//!
//! `Router::pick` is a pure function of the number, where the call came from, which
//! trunks the call may still use and a random roll, so every routing rule is a unit
//! test. The call actor asks it again for each failover.

use crate::trust::{Origin, Source};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// One trunk of a route's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTrunk {
    pub name: String,
    /// Lower goes first; trunks of one priority share the calls by `weight`.
    pub priority: u32,
    /// Share of the calls among the usable trunks of the same priority. A weight of 0
    /// takes calls only when no trunk of its priority with a weight is usable (a
    /// standby).
    pub weight: u32,
}

/// `[[routes]]`: calls whose dialled number starts with `prefix` (and, with
/// `from_trunk`, that came from that trunk) go to the first usable trunk of `trunks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    /// Only calls from this trunk take the route; `None`: every call.
    pub from_trunk: Option<String>,
    pub trunks: Vec<RouteTrunk>,
    /// A trunk that sends no provisional answer (not even 100) within this long is
    /// given up for the next (a carrier that died answers nothing; Timer B alone would
    /// keep the caller waiting 32 s). `None`: wait for Timer B.
    pub provisional_timeout: Option<Duration>,
    /// The final statuses after which the call tries the next trunk, for calls of this
    /// route (`None`: the node's `sip.failover_statuses`).
    pub failover_statuses: Option<Arc<[u16]>>,
}

impl Route {
    /// A route of `prefix` to one trunk, every other setting at its default.
    pub fn to(prefix: &str, trunk: &str) -> Route {
        Route {
            prefix: prefix.to_string(),
            from_trunk: None,
            trunks: vec![RouteTrunk {
                name: trunk.to_string(),
                priority: 0,
                weight: 1,
            }],
            provisional_timeout: None,
            failover_statuses: None,
        }
    }
}

/// What routing settled on for one attempt of a call: the trunk, and the settings of
/// the route that named it (`None` for the default trunk).
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    pub trunk: &'a Trunk,
    pub route: Option<&'a RouteRule>,
}

/// A route as the router holds it: trunks by index, in priority order.
#[derive(Debug, Clone)]
pub struct RouteRule {
    prefix: String,
    from: Option<usize>,
    /// (trunk index, priority, weight), sorted by priority (stable: list order within).
    choices: Vec<(usize, u32, u32)>,
    pub provisional_timeout: Option<Duration>,
    pub failover_statuses: Option<Arc<[u16]>>,
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
    /// Longest prefix first; at one prefix, the route for a source trunk before the
    /// route for every call.
    routes: Vec<RouteRule>,
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
    #[error("route for prefix {0:?} names no trunk")]
    EmptyRoute(String),
    #[error("route for prefix {prefix:?} names trunk {trunk:?} twice")]
    RepeatedTrunk { prefix: String, trunk: String },
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
        let unknown = |prefix: &str, trunk: &str| RouterError::UnknownTrunk {
            prefix: prefix.to_string(),
            trunk: trunk.to_string(),
        };
        let mut table: Vec<RouteRule> = Vec::with_capacity(routes.len());
        for r in routes {
            let from = match &r.from_trunk {
                Some(name) => Some(index(name).ok_or_else(|| unknown(&r.prefix, name))?),
                None => None,
            };
            if table.iter().any(|o| o.prefix == r.prefix && o.from == from) {
                return Err(RouterError::DuplicatePrefix(r.prefix));
            }
            if r.trunks.is_empty() {
                return Err(RouterError::EmptyRoute(r.prefix));
            }
            let mut choices = Vec::with_capacity(r.trunks.len());
            for (j, t) in r.trunks.iter().enumerate() {
                if r.trunks[..j].iter().any(|o| o.name == t.name) {
                    return Err(RouterError::RepeatedTrunk {
                        prefix: r.prefix.clone(),
                        trunk: t.name.clone(),
                    });
                }
                let i = index(&t.name).ok_or_else(|| unknown(&r.prefix, &t.name))?;
                choices.push((i, t.priority, t.weight));
            }
            choices.sort_by_key(|c| c.1);
            table.push(RouteRule {
                prefix: r.prefix,
                from,
                choices,
                provisional_timeout: r.provisional_timeout,
                failover_statuses: r.failover_statuses,
            });
        }
        table.sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.from.is_none()));
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

    /// The trunk for a call to `request_uri` from `origin` when every trunk is up: the
    /// first of the longest matching route, else the default. A call that came from a
    /// trunk is never sent back to that same trunk (a loop between two carriers that
    /// each default to the other would otherwise bounce until Max-Forwards runs out,
    /// and a carrier could use the node to reach its own network at someone's
    /// expense). `None`: no route (the caller gets 404).
    pub fn decide(&self, request_uri: &Uri, origin: Origin) -> Option<&Trunk> {
        self.pick(
            request_uri.user().unwrap_or_default(),
            origin.trunk(),
            |_| true,
            0,
        )
        .ok()
        .map(|p| p.trunk)
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
                .pick(number, None, |_| true, 0)
                .map(|p| p.trunk)
                .map_err(|_| TargetError::NoRoute(number.to_string())),
        }
    }

    /// The trunk for one attempt of a call to `dialled` from trunk `from`, among those
    /// `usable` accepts (up, not tried by the call yet, under its limits): the routes
    /// whose prefix the number starts with, longest first (at one prefix, the route for
    /// the caller's trunk before the route for every call); within a route, the lowest
    /// priority with a usable trunk, and among those a pick by weight with `roll` (a
    /// random number); then the default trunk. Never trunk `from`. `Err(true)`: routes
    /// matched but none of their trunks is usable (the caller gets 503, not 404).
    pub fn pick(
        &self,
        dialled: &str,
        from: Option<usize>,
        usable: impl Fn(&Trunk) -> bool,
        roll: u32,
    ) -> Result<Pick<'_>, bool> {
        let ok = |i: usize| Some(i) != from && self.trunks.get(i).is_some_and(&usable);
        let mut matched = false;
        for rule in &self.routes {
            if !dialled.starts_with(rule.prefix.as_str())
                || rule.from.is_some_and(|f| Some(f) != from)
            {
                continue;
            }
            matched = true;
            let mut rest = rule.choices.as_slice();
            while let Some(&(_, priority, _)) = rest.first() {
                let n = rest.iter().take_while(|c| c.1 == priority).count();
                let (tier, after) = rest.split_at(n);
                rest = after;
                if let Some(i) = weighted(tier, ok, roll) {
                    if let Some(trunk) = self.trunks.get(i) {
                        return Ok(Pick {
                            trunk,
                            route: Some(rule),
                        });
                    }
                }
            }
        }
        match self.default {
            Some(i) if ok(i) => self
                .trunks
                .get(i)
                .map(|trunk| Pick { trunk, route: None })
                .ok_or(matched),
            Some(i) => Err(matched || Some(i) != from),
            None => Err(matched),
        }
    }

    pub fn trunks(&self) -> &[Trunk] {
        &self.trunks
    }
}

/// The trunk index of `tier` (one priority) that `roll` lands on among those `ok`
/// accepts, in proportion to their weights; the first usable one when every usable
/// weight is 0.
fn weighted(tier: &[(usize, u32, u32)], ok: impl Fn(usize) -> bool, roll: u32) -> Option<usize> {
    let usable = || tier.iter().filter(|c| ok(c.0));
    let total: u64 = usable().map(|c| u64::from(c.2)).sum();
    if total == 0 {
        return usable().next().map(|c| c.0);
    }
    let mut at = u64::from(roll) % total;
    for c in usable() {
        let w = u64::from(c.2);
        if at < w {
            return Some(c.0);
        }
        at -= w;
    }
    None
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
        let up = |down: &'static [&'static str]| move |t: &Trunk| !down.contains(&&*t.name);
        let pick = |down| {
            r.pick("+442071234567", None, up(down), 0)
                .map(|p| &*p.trunk.name)
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
        assert_eq!(
            nowhere
                .pick("+15550100", None, |_| true, 0)
                .map(|p| &*p.trunk.name),
            Err(false)
        );
    }

    fn listed(name: &str, priority: u32, weight: u32) -> RouteTrunk {
        RouteTrunk {
            name: name.into(),
            priority,
            weight,
        }
    }

    fn five() -> Vec<Trunk> {
        ["a", "b", "c", "d", "peer"]
            .iter()
            .enumerate()
            .map(|(i, n)| trunk(n, &format!("192.0.2.{}:5060", i + 1)))
            .collect()
    }

    #[test]
    fn a_route_list_goes_by_priority_then_shares_by_weight() {
        let r = Router::new(
            five(),
            vec![Route {
                trunks: vec![listed("c", 2, 1), listed("a", 1, 3), listed("b", 1, 1)],
                provisional_timeout: Some(Duration::from_millis(1500)),
                ..Route::to("+44", "x")
            }],
            Some("d"),
        )
        .unwrap();
        let name = |down: &[&str], roll| {
            r.pick("+4420", None, |t| !down.contains(&&*t.name), roll)
                .map(|p| p.trunk.name.to_string())
                .unwrap()
        };
        // Weights 3:1 over four rolls: a, a, a, b.
        let spread: Vec<String> = (0..4).map(|roll| name(&[], roll)).collect();
        assert_eq!(spread, ["a", "a", "a", "b"]);
        // One of the first priority down: the other takes every call.
        assert!((0..8).all(|roll| name(&["a"], roll) == "b"));
        assert_eq!(name(&["a", "b"], 0), "c");
        assert_eq!(name(&["a", "b", "c"], 0), "d");
        let p = r.pick("+4420", None, |_| true, 0).unwrap();
        assert_eq!(
            p.route.and_then(|r| r.provisional_timeout),
            Some(Duration::from_millis(1500))
        );
        let p = r.pick("+4420", None, |t| &*t.name == "d", 0).unwrap();
        assert!(p.route.is_none(), "the default trunk has no route settings");
    }

    #[test]
    fn weight_zero_is_a_standby_within_its_priority() {
        let r = Router::new(
            five(),
            vec![Route {
                trunks: vec![listed("a", 0, 1), listed("b", 0, 0)],
                ..Route::to("1", "x")
            }],
            None,
        )
        .unwrap();
        let name = |down: &[&str], roll| {
            r.pick("155", None, |t| !down.contains(&&*t.name), roll)
                .map(|p| p.trunk.name.to_string())
        };
        assert!((0..8).all(|roll| name(&[], roll).as_deref() == Ok("a")));
        assert_eq!(name(&["a"], 5).as_deref(), Ok("b"));
        assert_eq!(name(&["a", "b"], 5), Err(true));
    }

    #[test]
    fn a_route_for_a_source_trunk_comes_before_the_route_for_everyone() {
        let r = Router::new(
            five(),
            vec![
                Route::to("+44", "a"),
                Route {
                    from_trunk: Some("peer".into()),
                    ..Route::to("+44", "b")
                },
                Route {
                    from_trunk: Some("peer".into()),
                    ..Route::to("+4", "c")
                },
            ],
            Some("d"),
        )
        .unwrap();
        let name = |from, down: &[&str]| {
            r.pick("+4420", from, |t| !down.contains(&&*t.name), 0)
                .map(|p| p.trunk.name.to_string())
                .unwrap()
        };
        assert_eq!(name(None, &[]), "a");
        assert_eq!(name(Some(0), &[]), "d", "a's own call never goes back to a");
        assert_eq!(name(Some(4), &[]), "b");
        // Past its own route, the peer's call falls to the route for everyone at the
        // same prefix, then to its shorter route, then the default.
        assert_eq!(name(Some(4), &["b"]), "a");
        assert_eq!(name(Some(4), &["b", "a"]), "c");
        assert_eq!(name(Some(4), &["b", "a", "c"]), "d");
        // The same prefix twice for the same source is refused; once per source is not.
        assert_eq!(
            Router::new(
                five(),
                vec![Route::to("+44", "a"), Route::to("+44", "b")],
                None
            )
            .unwrap_err(),
            RouterError::DuplicatePrefix("+44".into())
        );
        assert_eq!(
            Router::new(
                five(),
                vec![Route {
                    from_trunk: Some("nobody".into()),
                    ..Route::to("+44", "a")
                }],
                None
            )
            .unwrap_err(),
            RouterError::UnknownTrunk {
                prefix: "+44".into(),
                trunk: "nobody".into()
            }
        );
        assert_eq!(
            Router::new(
                five(),
                vec![Route {
                    trunks: vec![listed("a", 0, 1), listed("a", 1, 1)],
                    ..Route::to("+44", "a")
                }],
                None
            )
            .unwrap_err(),
            RouterError::RepeatedTrunk {
                prefix: "+44".into(),
                trunk: "a".into()
            }
        );
    }

    fn route(prefix: &str, trunk: &str) -> Route {
        Route::to(prefix, trunk)
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
