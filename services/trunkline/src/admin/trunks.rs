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
    TrunkHealth, TrunkLimits, TrunkRegister, TrunkRewrite, TrunkRewrites, TrunkState, TrunkTls,
    UpsertTrunkRequest,
};

use super::auth::{require, Role};
use super::peer;
use crate::config::{
    Config, RewriteConfig, RewriteDirection, RewriteField, RouteConfig, RouteTrunkConfig,
    TrunkAuthConfig, TrunkConfig, TrunkHealthConfig, TrunkLimitsConfig, TrunkRegisterConfig,
    TrunkTlsConfig, TrunkTransport, WeightedTrunkConfig,
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
        auth: t.auth.as_ref().map(credentials_view),
        outbound_auth: t.outbound_auth.as_ref().map(credentials_view),
        health: t.health.as_ref().map(|h| TrunkHealth {
            interval_secs: h.interval_secs,
            down_after: h.down_after,
            up_after: h.up_after,
            up_statuses: h.up_statuses.clone(),
        }),
        register: t.register.as_ref().map(|r| TrunkRegister {
            user: r.user.clone(),
            domain: r.domain.clone(),
            expires_secs: r.expires_secs,
            retry_min_secs: r.retry_min_secs,
            retry_max_secs: r.retry_max_secs,
        }),
        tls: t.tls.as_ref().map(|c| {
            let path = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            };
            TrunkTls {
                server_name: c.server_name.clone().unwrap_or_default(),
                ca_file: path(&c.ca_file),
                cert_file: path(&c.cert_file),
                key_file: path(&c.key_file),
                require_client_cert: c.require_client_cert,
            }
        }),
        rewrites: (!t.rewrites.is_empty()).then(|| TrunkRewrites {
            rules: t
                .rewrites
                .iter()
                .map(|r| TrunkRewrite {
                    direction: match r.direction {
                        RewriteDirection::Inbound => "inbound",
                        RewriteDirection::Outbound => "outbound",
                    }
                    .to_string(),
                    field: match r.field {
                        RewriteField::Ruri => "ruri",
                        RewriteField::From => "from",
                        RewriteField::To => "to",
                    }
                    .to_string(),
                    pattern: r.pattern.clone(),
                    replace: r.replace.clone(),
                })
                .collect(),
        }),
        trusted_identity: Some(t.trusted_identity),
        clear: Vec::new(),
    }
}

/// The sections of a trunk an upsert may leave out (kept as they were) or `clear`.
const SECTIONS: [&str; 6] = [
    "health",
    "outbound_auth",
    "register",
    "tls",
    "rewrites",
    "trusted_identity",
];

/// What an API trunk said beyond its configuration form: which of the `SECTIONS` it
/// left out, and which it asked to remove.
#[derive(Debug, Default)]
struct Said {
    trusted_identity: bool,
    clear: Vec<&'static str>,
}

/// Credentials as the API shows them: the username; passwords never leave the node.
fn credentials_view(a: &TrunkAuthConfig) -> TrunkAuth {
    TrunkAuth {
        username: a.username.clone(),
        password: String::new(),
    }
}

/// An API password: empty means "keep the one the trunk has" (reads return "").
fn api_credentials(a: TrunkAuth) -> TrunkAuthConfig {
    TrunkAuthConfig {
        username: a.username,
        password: (!a.password.is_empty()).then_some(a.password),
        password_file: None,
    }
}

fn api_health(h: TrunkHealth) -> TrunkHealthConfig {
    let d = TrunkHealthConfig::default();
    TrunkHealthConfig {
        interval_secs: if h.interval_secs == 0 {
            d.interval_secs
        } else {
            h.interval_secs
        },
        down_after: if h.down_after == 0 {
            d.down_after
        } else {
            h.down_after
        },
        up_after: if h.up_after == 0 {
            d.up_after
        } else {
            h.up_after
        },
        up_statuses: if h.up_statuses.is_empty() {
            d.up_statuses
        } else {
            h.up_statuses
        },
    }
}

fn api_register(r: TrunkRegister) -> TrunkRegisterConfig {
    let d = TrunkRegisterConfig::default();
    let or = |v: u64, default: u64| if v == 0 { default } else { v };
    TrunkRegisterConfig {
        user: r.user,
        domain: r.domain,
        expires_secs: or(r.expires_secs, d.expires_secs),
        retry_min_secs: or(r.retry_min_secs, d.retry_min_secs),
        retry_max_secs: or(r.retry_max_secs, d.retry_max_secs),
    }
}

fn api_tls(t: TrunkTls) -> TrunkTlsConfig {
    let path = |p: String| (!p.is_empty()).then(|| std::path::PathBuf::from(p));
    TrunkTlsConfig {
        server_name: (!t.server_name.is_empty()).then_some(t.server_name),
        ca_file: path(t.ca_file),
        cert_file: path(t.cert_file),
        key_file: path(t.key_file),
        require_client_cert: t.require_client_cert,
    }
}

fn api_rewrites(r: TrunkRewrites) -> Result<Vec<RewriteConfig>, Status> {
    r.rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let direction = match r.direction.as_str() {
                "inbound" => RewriteDirection::Inbound,
                "outbound" => RewriteDirection::Outbound,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "trunk.rewrites.rules[{i}].direction: {other:?} is not inbound or outbound"
                    )))
                }
            };
            let field = match r.field.as_str() {
                "ruri" => RewriteField::Ruri,
                "from" => RewriteField::From,
                "to" => RewriteField::To,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "trunk.rewrites.rules[{i}].field: {other:?} is not ruri, from or to"
                    )))
                }
            };
            Ok(RewriteConfig {
                direction,
                field,
                pattern: r.pattern,
                replace: r.replace,
            })
        })
        .collect()
}

/// The configuration form of an API trunk; what a file could not say is refused here,
/// the rest by `Config::problems`.
fn trunk_config(t: Trunk) -> Result<(TrunkConfig, Said), Status> {
    check_name("trunk.name", &t.name)?;
    let mut said = Said {
        trusted_identity: t.trusted_identity.is_some(),
        clear: Vec::new(),
    };
    for name in &t.clear {
        let Some(section) = SECTIONS.iter().find(|s| **s == name.as_str()) else {
            return Err(Status::invalid_argument(format!(
                "trunk.clear: {name:?} is not one of {}",
                SECTIONS.join(", ")
            )));
        };
        let given = match *section {
            "health" => t.health.is_some(),
            "outbound_auth" => t.outbound_auth.is_some(),
            "register" => t.register.is_some(),
            "tls" => t.tls.is_some(),
            "rewrites" => t.rewrites.is_some(),
            _ => t.trusted_identity.is_some(),
        };
        if given {
            return Err(Status::invalid_argument(format!(
                "trunk.clear: {name:?} is both given and cleared"
            )));
        }
        said.clear.push(section);
    }
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
    let rewrites = match t.rewrites {
        Some(r) => api_rewrites(r)?,
        None => Vec::new(),
    };
    let config = TrunkConfig {
        auth: t.auth.map(api_credentials),
        health: t.health.map(api_health),
        outbound_auth: t.outbound_auth.map(api_credentials),
        register: t.register.map(api_register),
        tls: t.tls.map(api_tls),
        rewrites,
        trusted_identity: t.trusted_identity.unwrap_or(false),
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
    };
    Ok((config, said))
}

/// What an upsert leaves out stays as the trunk had it (`old`, or nothing for a new
/// trunk): its OPTIONS pings, the credentials the node answers its challenges with, its
/// registration, TLS settings, rewrite rules and whether it asserts identities, unless
/// `clear` names them; and a password sent empty (as reads return it) is the one the
/// trunk has for that username. Without this, a client that knows fewer fields than the
/// node, or one that writes back what it read, would switch a trunk's pings or
/// authentication off unseen.
fn keep_unsaid(
    new: &mut TrunkConfig,
    old: Option<&TrunkConfig>,
    said: &Said,
) -> Result<(), Status> {
    let keep = |section: &str| !said.clear.contains(&section);
    if let Some(old) = old {
        if new.health.is_none() && keep("health") {
            new.health.clone_from(&old.health);
        }
        if new.outbound_auth.is_none() && keep("outbound_auth") {
            new.outbound_auth.clone_from(&old.outbound_auth);
        }
        if new.register.is_none() && keep("register") {
            new.register.clone_from(&old.register);
        }
        if new.tls.is_none() && keep("tls") {
            new.tls.clone_from(&old.tls);
        }
        if new.rewrites.is_empty() && keep("rewrites") {
            new.rewrites.clone_from(&old.rewrites);
        }
        if !said.trusted_identity && keep("trusted_identity") {
            new.trusted_identity = old.trusted_identity;
        }
    }
    let same_password = |new: &mut Option<TrunkAuthConfig>,
                         old: Option<&TrunkAuthConfig>,
                         field: &str|
     -> Result<(), Status> {
        let Some(n) = new.as_mut() else { return Ok(()) };
        if n.password.is_some() {
            return Ok(());
        }
        match old.filter(|o| o.username == n.username) {
            Some(o) => {
                n.password.clone_from(&o.password);
                n.password_file.clone_from(&o.password_file);
                Ok(())
            }
            None => Err(Status::invalid_argument(format!(
                "{field}.password: required for a new trunk or username (it is never read back)"
            ))),
        }
    };
    same_password(
        &mut new.auth,
        old.and_then(|o| o.auth.as_ref()),
        "trunk.auth",
    )?;
    same_password(
        &mut new.outbound_auth,
        old.and_then(|o| o.outbound_auth.as_ref()),
        "trunk.outbound_auth",
    )
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
        let (mut trunk, said) = trunk_config(
            q.trunk
                .ok_or_else(|| Status::invalid_argument("trunk: missing"))?,
        )?;
        let _one_at_a_time = self.state.writer.lock().await;
        let mut candidate = (*self.state.current()).clone();
        let replaced = match candidate.trunks.iter_mut().find(|t| t.name == trunk.name) {
            Some(slot) => {
                keep_unsaid(&mut trunk, Some(slot), &said)?;
                *slot = trunk.clone();
                true
            }
            None => {
                keep_unsaid(&mut trunk, None, &said)?;
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

    fn minimal(name: &str) -> Trunk {
        Trunk {
            name: name.into(),
            address: "192.0.2.10:5060".into(),
            ..Trunk::default()
        }
    }

    #[test]
    fn an_api_trunk_round_trips_through_the_configuration_form() {
        let t = Trunk {
            name: "carrier-b".into(),
            address: "192.0.2.10:5061".into(),
            transport: "tls".into(),
            sources: vec!["192.0.2.0/28".into()],
            fix_nated_contact: true,
            media_address: "auto".into(),
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
            outbound_auth: Some(TrunkAuth {
                username: "node".into(),
                password: "secret".into(),
            }),
            health: Some(TrunkHealth {
                interval_secs: 5,
                up_statuses: vec!["2xx".into(), "404".into()],
                ..TrunkHealth::default()
            }),
            register: Some(TrunkRegister {
                domain: "carrier.example".into(),
                expires_secs: 600,
                ..TrunkRegister::default()
            }),
            tls: Some(TrunkTls {
                server_name: "sbc.carrier.example".into(),
                ca_file: "/etc/trunkline/carrier-ca.crt".into(),
                require_client_cert: true,
                ..TrunkTls::default()
            }),
            rewrites: Some(TrunkRewrites {
                rules: vec![TrunkRewrite {
                    direction: "outbound".into(),
                    field: "ruri".into(),
                    pattern: r"^\+44(\d+)$".into(),
                    replace: "0$1".into(),
                }],
            }),
            trusted_identity: Some(true),
            ..Trunk::default()
        };
        let (mut c, said) = trunk_config(t.clone()).unwrap();
        keep_unsaid(&mut c, None, &said).unwrap();
        assert!(c.anchor_media, "absent anchor_media means anchored");
        assert_eq!(c.transport, TrunkTransport::Tls);
        assert_eq!((c.limits.calls_in, c.limits.cps_out), (30, 2));
        // Zeros are the defaults, as a file that leaves the key out.
        let h = c.health.as_ref().unwrap();
        assert_eq!((h.interval_secs, h.down_after), (5, 3));
        let r = c.register.as_ref().unwrap();
        assert_eq!((r.expires_secs, r.retry_min_secs), (600, 30));
        assert!(c.rewrites(&c.name).is_ok());
        let back = trunk_view(&c);
        assert_eq!(back.name, t.name);
        assert_eq!(back.media_address, "auto");
        assert_eq!(back.anchor_media, Some(true));
        assert_eq!(back.limits, t.limits);
        assert_eq!(back.tls, t.tls);
        assert_eq!(back.rewrites, t.rewrites);
        assert_eq!(back.trusted_identity, Some(true));
        assert_eq!(back.register.unwrap().domain, "carrier.example");
        for a in [back.auth.unwrap(), back.outbound_auth.unwrap()] {
            assert_eq!(a.password, "", "a password was read back");
        }
    }

    #[test]
    fn an_upsert_keeps_what_it_leaves_out_and_clears_what_it_names() {
        let (mut old, said) = trunk_config(Trunk {
            health: Some(TrunkHealth::default()),
            tls: Some(TrunkTls::default()),
            trusted_identity: Some(true),
            outbound_auth: Some(TrunkAuth {
                username: "node".into(),
                password: "secret".into(),
            }),
            ..minimal("uk")
        })
        .unwrap();
        keep_unsaid(&mut old, None, &said).unwrap();

        // Left out: kept.
        let (mut new, said) = trunk_config(minimal("uk")).unwrap();
        keep_unsaid(&mut new, Some(&old), &said).unwrap();
        assert_eq!(new.health, old.health);
        assert_eq!(new.tls, old.tls);
        assert!(new.trusted_identity);
        assert_eq!(new.outbound_auth, old.outbound_auth);

        // Written back as read (empty password): the password stays.
        let (mut again, said) = trunk_config(trunk_view(&old)).unwrap();
        keep_unsaid(&mut again, Some(&old), &said).unwrap();
        assert_eq!(again, old);

        // Cleared, or said false: gone.
        let (mut cleared, said) = trunk_config(Trunk {
            clear: vec!["health".into(), "tls".into(), "outbound_auth".into()],
            trusted_identity: Some(false),
            ..minimal("uk")
        })
        .unwrap();
        keep_unsaid(&mut cleared, Some(&old), &said).unwrap();
        assert!(cleared.health.is_none() && cleared.tls.is_none());
        assert!(cleared.outbound_auth.is_none() && !cleared.trusted_identity);
    }

    #[test]
    fn an_empty_password_needs_one_to_keep() {
        let (mut new, said) = trunk_config(Trunk {
            auth: Some(TrunkAuth {
                username: "pbx".into(),
                password: String::new(),
            }),
            ..minimal("new")
        })
        .unwrap();
        let e = keep_unsaid(&mut new, None, &said).unwrap_err();
        assert!(e.message().starts_with("trunk.auth.password"), "{e:?}");
    }

    #[test]
    fn malformed_fields_are_named() {
        let bad = |f: fn(&mut Trunk)| {
            let mut t = minimal("x");
            f(&mut t);
            trunk_config(t).unwrap_err().message().to_string()
        };
        assert!(bad(|t| t.name = "no spaces".into()).starts_with("trunk.name"));
        assert!(bad(|t| t.transport = "sctp".into()).starts_with("trunk.transport"));
        assert!(bad(|t| t.media_address = "x".into()).starts_with("trunk.media_address"));
        assert!(bad(|t| t.local_address = "nowhere".into()).starts_with("trunk.local_address"));
        assert!(bad(|t| t.clear = vec!["limits".into()]).starts_with("trunk.clear"));
        assert!(bad(|t| {
            t.clear = vec!["tls".into()];
            t.tls = Some(TrunkTls::default());
        })
        .starts_with("trunk.clear"));
        assert!(bad(|t| {
            t.rewrites = Some(TrunkRewrites {
                rules: vec![TrunkRewrite {
                    direction: "sideways".into(),
                    ..TrunkRewrite::default()
                }],
            })
        })
        .starts_with("trunk.rewrites.rules[0].direction"));
    }
}
