//! `trunkline.admin.v1.TrunkService`: trunks and the routing table, changed while the
//! node runs.
//!
//! A change is made to a copy of the node's configuration, checked by the very rules the
//! configuration file is checked by at start (`Config::problems`), built into a new
//! router and trust table the way start-up builds them (`app::router_and_trust`) and
//! swapped in whole: new calls use it at once, calls in progress keep the table they
//! started with. Standalone, changes last until the node restarts (the file is not
//! rewritten); in a cluster they are written to etcd (`crate::shared_config`), from where
//! every node applies them.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trunkline_call::Dispatcher;
use trunkline_proto::admin::v1::trunk_service_server::TrunkService;
use trunkline_proto::admin::v1::{
    DeleteTrunkRequest, DeleteTrunkResponse, GetRoutesRequest, GetTrunkRequest, ListTrunksRequest,
    ListTrunksResponse, Route, RouteTrunk, RoutingTable, SetRoutesRequest, Trunk, TrunkAuth,
    TrunkLimits, TrunkState, UpsertTrunkRequest,
};

use super::auth::{require, Role};
use super::peer;
use crate::config::{
    Config, RouteConfig, RouteTrunkConfig, TrunkAuthConfig, TrunkConfig, TrunkLimitsConfig,
    TrunkTransport, WeightedTrunkConfig,
};

/// The trunk service of one node.
#[derive(Clone)]
pub struct Trunks {
    node_id: Arc<str>,
    state: Arc<RoutingState>,
    /// In a cluster: the shared document changes are written to.
    shared: Option<Arc<crate::shared_config::SharedConfig>>,
}

impl Trunks {
    pub fn new(
        node_id: &str,
        state: Arc<RoutingState>,
        shared: Option<Arc<crate::shared_config::SharedConfig>>,
    ) -> Trunks {
        Trunks {
            node_id: Arc::from(node_id),
            state,
            shared,
        }
    }

    fn check_node(&self, node_id: &str) -> Result<(), Status> {
        super::require_local_node(&self.node_id, node_id)
    }

    /// Checks `candidate` as a configuration file is checked and puts it in force: here,
    /// or, in a cluster, in etcd (then here once the watch brings it back).
    async fn commit(&self, candidate: Config) -> Result<(), Status> {
        let problems = candidate.problems();
        if !problems.is_empty() {
            let missing = problems
                .iter()
                .any(|p| p.contains("is not the name of a trunk"));
            let text = problems.join("; ");
            return Err(if missing {
                Status::failed_precondition(text)
            } else {
                Status::invalid_argument(text)
            });
        }
        match &self.shared {
            None => self
                .state
                .put_in_force(candidate)
                .map_err(|e| Status::invalid_argument(format!("{e:#}"))),
            Some(shared) => shared.write(&candidate).await,
        }
    }
}

/// The trunks and routes in force, and the lock that makes operators' changes one at a
/// time (each is checked against the one before). Readers never take the lock; a cluster
/// node's etcd follower swaps in what the cluster decided without it.
pub struct RoutingState {
    current: arc_swap::ArcSwap<Config>,
    writer: tokio::sync::Mutex<()>,
    dispatcher: Dispatcher,
}

impl RoutingState {
    pub fn new(config: Config, dispatcher: Dispatcher) -> RoutingState {
        RoutingState {
            current: arc_swap::ArcSwap::from_pointee(config),
            writer: tokio::sync::Mutex::new(()),
            dispatcher,
        }
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Builds `config`'s router and trust table and swaps them in for new calls.
    pub fn put_in_force(&self, config: Config) -> anyhow::Result<()> {
        let (router, trust) = crate::app::router_and_trust(&config)?;
        self.dispatcher.set_routing(router, trust);
        self.current.store(Arc::new(config));
        Ok(())
    }
}

/// What a trunk may be called: what routes and filters name it by.
pub(super) fn trunk_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check_name(field: &str, name: &str) -> Result<(), Status> {
    if trunk_name_ok(name) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: {name:?} is not a trunk name (1-64 letters, digits, '-', '_', '.')"
        )))
    }
}

/// What the node sees of trunk `t` now: its pings and its registration.
fn trunk_state(t: &TrunkConfig, d: &Dispatcher) -> TrunkState {
    let health = d.trunk_health(&t.name);
    let registration = d.trunk_registration(&t.name);
    TrunkState {
        health: match (health, t.health.is_some()) {
            (Some(h), _) if !h.up => "down",
            (_, true) => "up",
            (_, false) => "unmonitored",
        }
        .to_string(),
        health_changed_ms: health.map_or(0, |h| h.changed_ms),
        registration: match (&registration, t.register.is_some()) {
            (Some(r), _) => r.state.as_str(),
            (None, true) => "registering",
            (None, false) => "",
        }
        .to_string(),
        registration_expires_ms: registration.as_ref().map_or(0, |r| r.expires_ms),
        registration_last_status: registration
            .as_ref()
            .map_or(0, |r| u32::from(r.last_status)),
    }
}

fn trunk_view_with_state(t: &TrunkConfig, d: &Dispatcher) -> Trunk {
    Trunk {
        state: Some(trunk_state(t, d)),
        ..trunk_view(t)
    }
}

fn trunk_view(t: &TrunkConfig) -> Trunk {
    Trunk {
        state: None,
        name: t.name.clone(),
        address: t.address.clone(),
        transport: match t.transport {
            TrunkTransport::Udp => "udp",
            TrunkTransport::Tcp => "tcp",
            TrunkTransport::Tls => "tls",
        }
        .to_string(),
        sources: t.sources.clone(),
        anchor_media: Some(t.anchor_media),
        media_interface: t.media_interface.clone().unwrap_or_default(),
        fix_nated_contact: t.fix_nated_contact,
        media_address: match t.media_address {
            trunkline_media::AddressPolicy::Sdp => "sdp",
            trunkline_media::AddressPolicy::Source => "source",
            trunkline_media::AddressPolicy::Auto => "auto",
        }
        .to_string(),
        local_address: t.local_address.map(|a| a.to_string()).unwrap_or_default(),
        limits: Some(TrunkLimits {
            calls_in: t.limits.calls_in,
            cps_in: t.limits.cps_in,
            calls_out: t.limits.calls_out,
            cps_out: t.limits.cps_out,
        }),
        // The password never leaves the node.
        auth: t.auth.as_ref().map(|a| TrunkAuth {
            username: a.username.clone(),
            password: String::new(),
        }),
    }
}

/// The configuration form of an API trunk; what a file could not say is refused here,
/// the rest by `Config::problems`.
fn trunk_config(t: Trunk) -> Result<TrunkConfig, Status> {
    check_name("trunk.name", &t.name)?;
    let transport = match t.transport.as_str() {
        "" | "udp" => TrunkTransport::Udp,
        "tcp" => TrunkTransport::Tcp,
        "tls" => TrunkTransport::Tls,
        other => {
            return Err(Status::invalid_argument(format!(
                "trunk.transport: {other:?} is not udp, tcp or tls"
            )))
        }
    };
    let media_address = match t.media_address.as_str() {
        "" | "sdp" => trunkline_media::AddressPolicy::Sdp,
        "source" => trunkline_media::AddressPolicy::Source,
        "auto" => trunkline_media::AddressPolicy::Auto,
        other => {
            return Err(Status::invalid_argument(format!(
                "trunk.media_address: {other:?} is not sdp, source or auto"
            )))
        }
    };
    let local_address = if t.local_address.is_empty() {
        None
    } else {
        Some(t.local_address.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "trunk.local_address: {:?} is not an ip:port",
                t.local_address
            ))
        })?)
    };
    let auth = match t.auth {
        None => None,
        Some(a) if a.password.is_empty() => {
            return Err(Status::invalid_argument(
                "trunk.auth.password: required (it is never read back)",
            ))
        }
        Some(a) => Some(TrunkAuthConfig {
            username: a.username,
            password: Some(a.password),
            password_file: None,
        }),
    };
    Ok(TrunkConfig {
        auth,
        // Pings, the node's own credentials, registration and TLS files are set in the
        // node's file; the API does not carry them yet (an upsert keeps a trunk's, see
        // `keep_unsaid`).
        health: None,
        outbound_auth: None,
        register: None,
        tls: None,
        rewrites: Vec::new(),
        trusted_identity: false,
        name: t.name,
        address: t.address,
        transport,
        anchor_media: t.anchor_media.unwrap_or(true),
        media_interface: (!t.media_interface.is_empty()).then_some(t.media_interface),
        sources: t.sources,
        fix_nated_contact: t.fix_nated_contact,
        media_address,
        local_address,
        limits: t
            .limits
            .map(|l| TrunkLimitsConfig {
                calls_in: l.calls_in,
                cps_in: l.cps_in,
                calls_out: l.calls_out,
                cps_out: l.cps_out,
            })
            .unwrap_or_default(),
    })
}

/// What the API cannot say yet stays as the trunk had it: its OPTIONS pings
/// (`[trunks.health]`) and the credentials the node answers its challenges with
/// (`[trunks.outbound_auth]`), its registration (`[trunks.register]`), its TLS
/// settings (`[trunks.tls]`), its rewrite rules and whether it asserts identities, all
/// set in the file. Without this an upsert would
/// switch a trunk's pings or authentication off unseen.
fn keep_unsaid(new: &mut TrunkConfig, old: &TrunkConfig) {
    if new.health.is_none() {
        new.health.clone_from(&old.health);
    }
    if new.outbound_auth.is_none() {
        new.outbound_auth.clone_from(&old.outbound_auth);
    }
    if new.register.is_none() {
        new.register.clone_from(&old.register);
    }
    if new.tls.is_none() {
        new.tls.clone_from(&old.tls);
    }
    if new.rewrites.is_empty() {
        new.rewrites.clone_from(&old.rewrites);
    }
    new.trusted_identity |= old.trusted_identity;
}

fn table_view(config: &Config) -> RoutingTable {
    RoutingTable {
        routes: config.routes.iter().map(route_view).collect(),
        default_trunk: config.routing.default_trunk.clone().unwrap_or_default(),
    }
}

/// A route as the API shows it.
fn route_view(r: &RouteConfig) -> Route {
    Route {
        prefix: r.prefix.clone(),
        trunk: r.trunk.clone().unwrap_or_default(),
        trunks: r
            .trunks
            .iter()
            .map(|t| match t {
                RouteTrunkConfig::Name(n) => RouteTrunk {
                    name: n.clone(),
                    priority: None,
                    weight: None,
                },
                RouteTrunkConfig::Weighted(w) => RouteTrunk {
                    name: w.name.clone(),
                    priority: w.priority,
                    weight: w.weight,
                },
            })
            .collect(),
        from_trunk: r.from_trunk.clone().unwrap_or_default(),
        provisional_timeout_ms: r
            .provisional_timeout_ms
            .map_or(0, |ms| u32::try_from(ms).unwrap_or(u32::MAX)),
        failover_statuses: r.failover_statuses.clone(),
    }
}

/// A route from the API, as the configuration holds it.
fn route_config(r: &Route) -> RouteConfig {
    RouteConfig {
        prefix: r.prefix.clone(),
        trunk: (!r.trunk.is_empty()).then(|| r.trunk.clone()),
        trunks: r
            .trunks
            .iter()
            .map(|t| match (t.priority, t.weight) {
                (None, None) => RouteTrunkConfig::Name(t.name.clone()),
                (priority, weight) => RouteTrunkConfig::Weighted(WeightedTrunkConfig {
                    name: t.name.clone(),
                    priority,
                    weight,
                }),
            })
            .collect(),
        from_trunk: (!r.from_trunk.is_empty()).then(|| r.from_trunk.clone()),
        provisional_timeout_ms: (r.provisional_timeout_ms > 0)
            .then_some(u64::from(r.provisional_timeout_ms)),
        failover_statuses: r.failover_statuses.clone(),
    }
}

/// What in the routing table names `trunk`, for a refusal to delete it.
fn uses_of(config: &Config, trunk: &str) -> Vec<String> {
    let mut uses: Vec<String> = config
        .routes
        .iter()
        .filter(|r| r.names().iter().any(|n| n == trunk))
        .map(|r| format!("route {:?}", r.prefix))
        .collect();
    if config.routing.default_trunk.as_deref() == Some(trunk) {
        uses.push("default_trunk".to_string());
    }
    uses
}

#[tonic::async_trait]
impl TrunkService for Trunks {
    async fn list_trunks(
        &self,
        req: Request<ListTrunksRequest>,
    ) -> Result<Response<ListTrunksResponse>, Status> {
        require(&req, Role::Viewer, "ListTrunks")?;
        self.check_node(&req.get_ref().node_id)?;
        let config = self.state.current();
        let d = &self.state.dispatcher;
        let mut trunks: Vec<Trunk> = config
            .trunks
            .iter()
            .map(|t| trunk_view_with_state(t, d))
            .collect();
        trunks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListTrunksResponse { trunks }))
    }

    async fn get_trunk(&self, req: Request<GetTrunkRequest>) -> Result<Response<Trunk>, Status> {
        require(&req, Role::Viewer, "GetTrunk")?;
        let q = req.get_ref();
        self.check_node(&q.node_id)?;
        check_name("name", &q.name)?;
        let config = self.state.current();
        config
            .trunks
            .iter()
            .find(|t| t.name == q.name)
            .map(|t| Response::new(trunk_view_with_state(t, &self.state.dispatcher)))
            .ok_or_else(|| Status::not_found(format!("name: no trunk {:?}", q.name)))
    }

    async fn upsert_trunk(
        &self,
        req: Request<UpsertTrunkRequest>,
    ) -> Result<Response<Trunk>, Status> {
        let who = require(&req, Role::Operator, "UpsertTrunk")?;
        let from = peer(&req);
        let q = req.into_inner();
        self.check_node(&q.node_id)?;
        let trunk = trunk_config(
            q.trunk
                .ok_or_else(|| Status::invalid_argument("trunk: missing"))?,
        )?;
        let _one_at_a_time = self.state.writer.lock().await;
        let mut candidate = (*self.state.current()).clone();
        let mut trunk = trunk;
        let replaced = match candidate.trunks.iter_mut().find(|t| t.name == trunk.name) {
            Some(slot) => {
                keep_unsaid(&mut trunk, slot);
                *slot = trunk.clone();
                true
            }
            None => {
                candidate.trunks.push(trunk.clone());
                false
            }
        };
        self.commit(candidate).await?;
        tracing::warn!(caller = %who.name, peer = %from, action = "upsert_trunk",
            trunk = %trunk.name, address = %trunk.address, replaced,
            "admin: trunk set; new calls use it");
        Ok(Response::new(trunk_view(&trunk)))
    }

    async fn delete_trunk(
        &self,
        req: Request<DeleteTrunkRequest>,
    ) -> Result<Response<DeleteTrunkResponse>, Status> {
        let who = require(&req, Role::Operator, "DeleteTrunk")?;
        let from = peer(&req);
        let q = req.into_inner();
        self.check_node(&q.node_id)?;
        check_name("name", &q.name)?;
        let _one_at_a_time = self.state.writer.lock().await;
        let config = self.state.current();
        if !config.trunks.iter().any(|t| t.name == q.name) {
            return Err(Status::not_found(format!("name: no trunk {:?}", q.name)));
        }
        let uses = uses_of(&config, &q.name);
        if !uses.is_empty() {
            return Err(Status::failed_precondition(format!(
                "trunk {:?} is still named by {}: change the routes first",
                q.name,
                uses.join(", ")
            )));
        }
        let mut candidate = (*config).clone();
        candidate.trunks.retain(|t| t.name != q.name);
        self.commit(candidate).await?;
        tracing::warn!(caller = %who.name, peer = %from, action = "delete_trunk",
            trunk = %q.name, "admin: trunk deleted; calls in progress on it go on");
        Ok(Response::new(DeleteTrunkResponse {}))
    }

    async fn get_routes(
        &self,
        req: Request<GetRoutesRequest>,
    ) -> Result<Response<RoutingTable>, Status> {
        require(&req, Role::Viewer, "GetRoutes")?;
        self.check_node(&req.get_ref().node_id)?;
        let config = self.state.current();
        Ok(Response::new(table_view(&config)))
    }

    async fn set_routes(
        &self,
        req: Request<SetRoutesRequest>,
    ) -> Result<Response<RoutingTable>, Status> {
        let who = require(&req, Role::Operator, "SetRoutes")?;
        let from = peer(&req);
        let q = req.into_inner();
        self.check_node(&q.node_id)?;
        let table = q.table.unwrap_or_default();
        if !table.default_trunk.is_empty() {
            check_name("table.default_trunk", &table.default_trunk)?;
        }
        for (i, r) in table.routes.iter().enumerate() {
            if !r.trunk.is_empty() {
                check_name(&format!("table.routes[{i}].trunk"), &r.trunk)?;
            }
            for (j, t) in r.trunks.iter().enumerate() {
                check_name(&format!("table.routes[{i}].trunks[{j}].name"), &t.name)?;
            }
            if !r.from_trunk.is_empty() {
                check_name(&format!("table.routes[{i}].from_trunk"), &r.from_trunk)?;
            }
            let prefix_ok = r.prefix.len() <= 32
                && r.prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+*#".contains(&b));
            if !prefix_ok {
                return Err(Status::invalid_argument(format!(
                    "table.routes[{i}].prefix: {:?} is not a number prefix",
                    r.prefix
                )));
            }
        }
        let _one_at_a_time = self.state.writer.lock().await;
        let mut candidate = (*self.state.current()).clone();
        candidate.routes = table.routes.iter().map(route_config).collect();
        candidate.routing.default_trunk =
            (!table.default_trunk.is_empty()).then(|| table.default_trunk.clone());
        let view = table_view(&candidate);
        let routes = candidate.routes.len();
        self.commit(candidate).await?;
        tracing::warn!(caller = %who.name, peer = %from, action = "set_routes",
            routes, default_trunk = %table.default_trunk,
            "admin: routing table replaced; new calls use it");
        Ok(Response::new(view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_trunk_round_trips_through_the_configuration_form() {
        let t = Trunk {
            state: None,
            name: "carrier-b".into(),
            address: "192.0.2.10:5060".into(),
            transport: "tcp".into(),
            sources: vec!["192.0.2.0/28".into()],
            anchor_media: None,
            media_interface: String::new(),
            fix_nated_contact: true,
            media_address: "auto".into(),
            local_address: String::new(),
            limits: Some(TrunkLimits {
                calls_in: 30,
                cps_in: 5,
                calls_out: 0,
                cps_out: 2,
            }),
            auth: Some(TrunkAuth {
                username: "pbx".into(),
                password: "pw".into(),
            }),
        };
        let c = trunk_config(t.clone()).unwrap();
        assert!(c.anchor_media, "absent anchor_media means anchored");
        assert_eq!(c.transport, TrunkTransport::Tcp);
        assert_eq!((c.limits.calls_in, c.limits.cps_out), (30, 2));
        let back = trunk_view(&c);
        assert_eq!(back.name, t.name);
        assert_eq!(back.media_address, "auto");
        assert_eq!(back.anchor_media, Some(true));
        assert_eq!(back.limits, t.limits);
        let auth = back.auth.unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("pbx", "")
        );
    }

    #[test]
    fn an_upsert_keeps_the_pings_the_api_cannot_carry() {
        let t = Trunk {
            name: "uk".into(),
            address: "192.0.2.10:5060".into(),
            ..Trunk::default()
        };
        let old = TrunkConfig {
            health: Some(crate::config::TrunkHealthConfig::default()),
            ..trunk_config(t.clone()).unwrap()
        };
        let mut new = trunk_config(t).unwrap();
        assert!(new.health.is_none());
        keep_unsaid(&mut new, &old);
        assert_eq!(new.health, old.health);
    }

    #[test]
    fn malformed_fields_are_named() {
        let bad = |f: fn(&mut Trunk)| {
            let mut t = Trunk {
                name: "x".into(),
                address: "192.0.2.10:5060".into(),
                ..Trunk::default()
            };
            f(&mut t);
            trunk_config(t).unwrap_err().message().to_string()
        };
        assert!(bad(|t| t.name = "no spaces".into()).starts_with("trunk.name"));
        assert!(bad(|t| t.transport = "sctp".into()).starts_with("trunk.transport"));
        assert!(bad(|t| t.media_address = "x".into()).starts_with("trunk.media_address"));
        assert!(bad(|t| t.local_address = "nowhere".into()).starts_with("trunk.local_address"));
    }
}
