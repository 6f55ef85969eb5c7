//! `trunkctl`, the operator CLI: a thin client of a node's gRPC admin API and nothing
//! else, so whatever it does a script can do with any gRPC client.
//!
//! Exit codes: 0 done; 1 the server failed or could not be reached; 2 usage (a wrong
//! command line, or a request the server found malformed); 3 not found.

mod calls;
mod output;
mod trunks;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use trunkline_proto::admin::v1::call_service_client::CallServiceClient;
use trunkline_proto::admin::v1::node_service_client::NodeServiceClient;
use trunkline_proto::admin::v1::trunk_service_client::TrunkServiceClient;
use trunkline_proto::admin::v1::{
    CallState, DeleteTrunkRequest, DrainRequest, GetCallRequest, GetNodeRequest, GetRoutesRequest,
    GetTrunkRequest, HangupCallRequest, ListCallsRequest, ListNodesRequest, ListTrunksRequest,
    OriginateCallRequest, Party, SetRoutesRequest, TransferCallRequest, UndrainRequest,
    UpsertTrunkRequest, WatchCallsRequest,
};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "trunkctl",
    version,
    about = "Operate Trunkline nodes through their admin API"
)]
struct Cli {
    /// The node's admin API, host:port (its `[admin] listen`).
    #[arg(
        long,
        global = true,
        env = "TRUNKCTL_SERVER",
        default_value = "127.0.0.1:50051"
    )]
    server: String,
    /// A bearer token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "TRUNKCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Speak TLS, trusting the node's certificate if one of these PEM CA certificates
    /// signs it (the node's `[admin] tls_cert_file`).
    #[arg(long, global = true, env = "TRUNKCTL_CA")]
    ca: Option<std::path::PathBuf>,
    /// A PEM client certificate for nodes that require one (`[admin]
    /// tls_client_ca_file`); implies TLS, with --key.
    #[arg(long, global = true, env = "TRUNKCTL_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, global = true, env = "TRUNKCTL_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// The name the node's certificate must carry (default: the host of --server).
    #[arg(long, global = true, env = "TRUNKCTL_TLS_NAME")]
    tls_name: Option<String>,
    /// Output: an aligned table, or JSON or YAML for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The node: what it is, drain and undrain.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// The node's calls: list, show, watch, hang up.
    Calls {
        #[command(subcommand)]
        action: CallsAction,
    },
    /// The node's trunks: list, show, add or change from a file, delete.
    Trunks {
        #[command(subcommand)]
        action: TrunksAction,
    },
    /// The node's routing table: show, replace from a file.
    Routes {
        #[command(subcommand)]
        action: RoutesAction,
    },
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum NodeAction {
    /// Identity, state, calls, addresses and limits.
    Get {
        /// Another node's id (default: the node at --server).
        #[arg(long)]
        node: Option<String>,
    },
    /// Stop taking new calls (new INVITEs get 503 with Retry-After); calls go on.
    Drain {
        #[arg(long)]
        node: Option<String>,
        /// Shut the node down as SIGTERM does: calls end until its drain_secs, the rest
        /// go to their buddies (in a cluster), and it exits 0. Cannot be undone.
        #[arg(long)]
        shutdown: bool,
    },
    /// Take new calls again.
    Undrain {
        #[arg(long)]
        node: Option<String>,
    },
    /// The cluster's nodes as the node at --server sees them in etcd (itself alone when
    /// standalone).
    List,
}

#[derive(Debug, Subcommand)]
enum CallsAction {
    /// Calls in creation order, one per row.
    List {
        /// Only calls in this state (setup, ringing, early_media, established, held, or
        /// ended for the recently ended ones).
        #[arg(long, value_parser = calls::parse_state)]
        state: Option<CallState>,
        /// Only calls from or to this trunk.
        #[arg(long)]
        trunk: Option<String>,
        /// Only calls whose caller number starts with this.
        #[arg(long)]
        caller: Option<String>,
        /// Only calls whose called number starts with this.
        #[arg(long)]
        callee: Option<String>,
        /// Only calls of this node.
        #[arg(long)]
        node: Option<String>,
        /// Calls per page (the server caps it at 1000).
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        /// Fetch every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// One call: both legs, times, and the relay's media counters.
    Get { id: String },
    /// The calls that exist, then one line per event until interrupted (Ctrl-C).
    Watch {
        /// Only this call.
        id: Option<String>,
        /// Only calls of this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// End a call: BYE on both legs (CANCEL and 480 while it is being set up), with an
    /// RFC 3326 Reason header.
    Hangup {
        id: String,
        /// The Q.850 cause in the Reason header (default 16, normal clearing).
        #[arg(long, default_value_t = 16)]
        cause: u32,
        /// The Reason header's text (default "Terminated by operator").
        #[arg(long)]
        text: Option<String>,
    },
    /// Blind transfer by the node: call NUMBER and, once it answers, connect it to the
    /// other party in place of the transferred one (no REFER needed at either end).
    /// Waits for the outcome (up to --wait seconds).
    Transfer {
        id: String,
        number: String,
        /// The party to replace.
        #[arg(long, value_enum, default_value_t = Side::Callee)]
        party: Side,
        /// Call NUMBER through this trunk (default: where the routing table sends it).
        #[arg(long)]
        trunk: Option<String>,
        /// How long to wait for the target to answer, in seconds.
        #[arg(long, default_value_t = 190)]
        wait: u64,
    },
    /// Place a call between two parties (third-party call control): the node calls A,
    /// and once A answers calls B and bridges them, media anchored. Prints the new call.
    Originate {
        /// The first party's number (called first).
        a: String,
        /// The second party's number (called once A answers).
        b: String,
        /// Reach A through this trunk (default: where the routing table sends A's number).
        #[arg(long)]
        a_trunk: Option<String>,
        /// Reach B through this trunk.
        #[arg(long)]
        b_trunk: Option<String>,
        /// Wait up to this many seconds for both parties to answer: exit 0 once they do,
        /// 1 if the call ends first or is still being set up when the time is up.
        #[arg(long)]
        wait: Option<u64>,
    },
}

/// A side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Side {
    Caller,
    Callee,
}

#[derive(Debug, Subcommand)]
enum TrunksAction {
    /// Every trunk.
    List,
    /// One trunk.
    Get { name: String },
    /// Add or replace the `[[trunks]]` of a file (TOML as in the node's configuration, or
    /// YAML); new calls use them at once, calls in progress keep theirs.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Remove a trunk (refused while a route names it).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum RoutesAction {
    /// The prefix routes and the default trunk.
    List,
    /// Replace the whole table with the `[[routes]]` and `[routing] default_trunk` of a
    /// file (TOML as in the node's configuration, or YAML).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
}

/// Exit code for a gRPC status, as documented above.
fn exit_code(status: &Status) -> u8 {
    match status.code() {
        Code::NotFound => 3,
        Code::InvalidArgument => 2,
        _ => 1,
    }
}

/// What a bare transport failure most likely means: a node that speaks TLS to a client
/// that does not, or one that dropped the connection over our client certificate.
fn hint(s: &Status, tls: bool) -> &'static str {
    match (s.code(), tls) {
        (Code::Internal | Code::Unavailable | Code::Unknown, false)
            if s.message().contains("h2 protocol error") =>
        {
            " (does the node's API speak TLS? give --ca)"
        }
        (Code::Cancelled | Code::Unavailable | Code::Unknown, true) => {
            " (the node may have refused our client certificate: check --cert and --key)"
        }
        _ => "",
    }
}

/// How to reach the node: plain HTTP/2, or TLS with the trusted CA and our certificate.
#[derive(Debug, Clone, Default)]
struct Tls {
    ca: Option<std::path::PathBuf>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    name: Option<String>,
}

impl Tls {
    fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    fn config(&self) -> anyhow::Result<ClientTlsConfig> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("--{what} {}", p.display()))
        };
        let mut c = ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            c = c.ca_certificate(Certificate::from_pem(read("ca", ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c = c.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
        }
        if let Some(name) = &self.name {
            c = c.domain_name(name.clone());
        }
        Ok(c)
    }
}

fn endpoint(server: &str, tls: &Tls) -> anyhow::Result<Endpoint> {
    let uri = if server.contains("://") {
        server.to_string()
    } else if tls.enabled() {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    };
    let mut e = Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if tls.enabled() {
        e = e.tls_config(tls.config()?)?;
    }
    Ok(e)
}

/// Wraps `message` with the bearer token, if any, and a 30 s deadline.
fn request<T>(message: T, token: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut req = streaming_request(message, token)?;
    req.set_timeout(Duration::from_secs(30));
    Ok(req)
}

/// Like `request`, without a deadline: a watch runs until the user stops it.
fn streaming_request<T>(message: T, token: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("--token: not a valid header value"))?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

/// The other members of the answering node's cluster that have an admin API: (id,
/// address). Empty for a standalone node, or when the node cannot say.
async fn cluster_peers(channel: &Channel, token: Option<&str>) -> Vec<(String, String)> {
    let Ok(req) = request(ListNodesRequest {}, token) else {
        return Vec::new();
    };
    match NodeServiceClient::new(channel.clone())
        .list_nodes(req)
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            r.nodes
                .into_iter()
                .filter(|n| r.clustered && !n.local && !n.admin_address.is_empty())
                .map(|n| (n.id, n.admin_address))
                .collect()
        }
        Err(_) => Vec::new(),
    }
}

enum ListError {
    Request(anyhow::Error),
    Status(Status),
}

/// The calls `query` names: the first page, or every page with `all`.
async fn list_all(
    client: &mut CallServiceClient<Channel>,
    mut query: ListCallsRequest,
    all: bool,
    token: Option<&str>,
) -> Result<Vec<trunkline_proto::admin::v1::Call>, ListError> {
    let mut listed = Vec::new();
    loop {
        let page = client
            .list_calls(request(query.clone(), token).map_err(ListError::Request)?)
            .await
            .map_err(ListError::Status)?
            .into_inner();
        listed.extend(page.calls);
        if !all || page.next_page_token.is_empty() {
            return Ok(listed);
        }
        query.page_token = page.next_page_token;
    }
}

/// Connects to `--server` (exit 2 for an address that cannot be one, 1 for no answer).
async fn connect(server: &str, tls: &Tls) -> Result<Channel, (u8, String)> {
    endpoint(server, tls)
        .map_err(|e| (2, format!("--server {server}: {e:#}")))?
        .connect()
        .await
        .map_err(|e| {
            (
                1,
                format!("cannot reach {server}: {:#}", anyhow::Error::new(e)),
            )
        })
}

async fn run(cli: Cli) -> Result<(), (u8, String)> {
    let server_error = |e: anyhow::Error| (1u8, format!("{e:#}"));
    let tls = Tls {
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        name: cli.tls_name.clone(),
    };
    let tls_on = tls.enabled();
    let status_error = move |s: Status| {
        (
            exit_code(&s),
            format!("{:?}: {}{}", s.code(), s.message(), hint(&s, tls_on)),
        )
    };
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "trunkctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Calls { action } => {
            let channel = connect(&cli.server, &tls).await?;
            let mut client = CallServiceClient::new(channel.clone());
            let token = cli.token.as_deref();
            match action {
                CallsAction::List {
                    state,
                    trunk,
                    caller,
                    callee,
                    node,
                    page_size,
                    all,
                } => {
                    let query = ListCallsRequest {
                        node_id: node.unwrap_or_default(),
                        state: state.unwrap_or(CallState::Unspecified) as i32,
                        trunk: trunk.unwrap_or_default(),
                        caller_number: caller.unwrap_or_default(),
                        callee_number: callee.unwrap_or_default(),
                        page_size,
                        page_token: String::new(),
                    };
                    // Without --node, a clustered node's peers are asked too: the list
                    // is the cluster's. A peer that does not answer is named on stderr.
                    let peers = if query.node_id.is_empty() {
                        cluster_peers(&channel, token).await
                    } else {
                        Vec::new()
                    };
                    let mut listed = list_all(&mut client, query.clone(), all, token)
                        .await
                        .map_err(|e| match e {
                            ListError::Request(e) => server_error(e),
                            ListError::Status(s) => status_error(s),
                        })?;
                    for (id, addr) in peers {
                        let mut q = query.clone();
                        q.node_id.clone_from(&id);
                        let got = match connect(&addr, &tls).await {
                            Ok(ch) => list_all(&mut CallServiceClient::new(ch), q, all, token)
                                .await
                                .map_err(|e| match e {
                                    ListError::Request(e) => format!("{e:#}"),
                                    ListError::Status(s) => {
                                        format!("{:?}: {}", s.code(), s.message())
                                    }
                                }),
                            Err((_, e)) => Err(e),
                        };
                        match got {
                            Ok(calls) => listed.extend(calls),
                            Err(e) => eprintln!("trunkctl: node {id} ({addr}) not listed: {e}"),
                        }
                    }
                    let now = prost_types::Timestamp::from(std::time::SystemTime::now());
                    let doc = serde_json::json!({
                        "calls": listed.iter().map(calls::call_json).collect::<Vec<_>>(),
                    });
                    calls::print(&doc, || calls::calls_table(&listed, &now), cli.output)
                        .map_err(server_error)
                }
                CallsAction::Get { id } => {
                    let mut got = client
                        .get_call(
                            request(GetCallRequest { id: id.clone() }, token)
                                .map_err(server_error)?,
                        )
                        .await;
                    // A call this node does not have may be on another node of the cluster.
                    if matches!(&got, Err(s) if s.code() == tonic::Code::NotFound) {
                        for (_, addr) in cluster_peers(&channel, token).await {
                            let Ok(ch) = connect(&addr, &tls).await else {
                                continue;
                            };
                            let req = request(GetCallRequest { id: id.clone() }, token)
                                .map_err(server_error)?;
                            let there = CallServiceClient::new(ch).get_call(req).await;
                            if there.is_ok() {
                                got = there;
                                break;
                            }
                        }
                    }
                    let call = got.map_err(status_error)?.into_inner();
                    calls::print(
                        &calls::call_json(&call),
                        || calls::call_detail(&call),
                        cli.output,
                    )
                    .map_err(server_error)
                }
                CallsAction::Watch { id, node } => {
                    let watch = WatchCallsRequest {
                        node_id: node.unwrap_or_default(),
                        call_id: id.unwrap_or_default(),
                    };
                    let mut stream = client
                        .watch_calls(streaming_request(watch, token).map_err(server_error)?)
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    // Lines are buffered and flushed within 100 ms of the first one
                    // waiting: a busy node sends thousands of events a second, and a
                    // write per line would cost more than everything else trunkctl does.
                    let mut watching = calls::Watching::default();
                    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
                    let ctrl_c = tokio::signal::ctrl_c();
                    tokio::pin!(ctrl_c);
                    let mut flush_at: Option<tokio::time::Instant> = None;
                    let flush = |out: &mut std::io::BufWriter<std::io::Stdout>| {
                        std::io::Write::flush(out).map_err(|e| (1u8, format!("stdout: {e}")))
                    };
                    loop {
                        let next = tokio::select! {
                            next = stream.message() => next,
                            () = async {
                                match flush_at {
                                    Some(at) => tokio::time::sleep_until(at).await,
                                    None => std::future::pending().await,
                                }
                            } => {
                                flush(&mut out)?;
                                flush_at = None;
                                continue;
                            }
                            _ = &mut ctrl_c => return flush(&mut out),
                        };
                        match next {
                            Ok(Some(event)) => {
                                calls::write_event(&mut out, &mut watching, &event, cli.output)
                                    .map_err(server_error)?;
                                flush_at.get_or_insert_with(|| {
                                    tokio::time::Instant::now() + Duration::from_millis(100)
                                });
                            }
                            Ok(None) => return flush(&mut out),
                            Err(status) => {
                                flush(&mut out)?;
                                return Err(status_error(status));
                            }
                        }
                    }
                }
                CallsAction::Hangup { id, cause, text } => {
                    let hangup = HangupCallRequest {
                        id,
                        reason_cause: cause,
                        reason_text: text.unwrap_or_default(),
                    };
                    let mut done = client
                        .hangup_call(request(hangup.clone(), token).map_err(server_error)?)
                        .await;
                    if matches!(&done, Err(s) if s.code() == tonic::Code::NotFound) {
                        for (_, addr) in cluster_peers(&channel, token).await {
                            let Ok(ch) = connect(&addr, &tls).await else {
                                continue;
                            };
                            let req = request(hangup.clone(), token).map_err(server_error)?;
                            let there = CallServiceClient::new(ch).hangup_call(req).await;
                            if there.is_ok() {
                                done = there;
                                break;
                            }
                        }
                    }
                    let done = done.map_err(status_error)?.into_inner();
                    let call = done.call.unwrap_or_default();
                    calls::print(
                        &serde_json::json!({ "call": calls::call_json(&call) }),
                        || format!("{}  hangup sent\n", call.id),
                        cli.output,
                    )
                    .map_err(server_error)
                }
                CallsAction::Originate {
                    a,
                    b,
                    a_trunk,
                    b_trunk,
                    wait,
                } => {
                    let placed = OriginateCallRequest {
                        a_number: a,
                        a_trunk: a_trunk.unwrap_or_default(),
                        b_number: b,
                        b_trunk: b_trunk.unwrap_or_default(),
                    };
                    let mut call = client
                        .originate_call(request(placed, token).map_err(server_error)?)
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .call
                        .unwrap_or_default();
                    if let Some(secs) = wait {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
                        loop {
                            let state = CallState::try_from(call.state);
                            if matches!(state, Ok(CallState::Established | CallState::Held)) {
                                break;
                            }
                            if state == Ok(CallState::Ended) {
                                let end = call.end.clone().unwrap_or_default();
                                return Err((
                                    1,
                                    format!(
                                        "call {} ended before both parties answered: status {} ({})",
                                        call.id, end.status, end.cause
                                    ),
                                ));
                            }
                            if tokio::time::Instant::now() >= deadline {
                                return Err((
                                    1,
                                    format!(
                                        "call {} is still being set up after {secs} s",
                                        call.id
                                    ),
                                ));
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            call = client
                                .get_call(
                                    request(
                                        GetCallRequest {
                                            id: call.id.clone(),
                                        },
                                        token,
                                    )
                                    .map_err(server_error)?,
                                )
                                .await
                                .map_err(status_error)?
                                .into_inner();
                        }
                    }
                    calls::print(
                        &serde_json::json!({ "call": calls::call_json(&call) }),
                        || {
                            format!(
                                "{}  {}  {} -> {}\n",
                                call.id,
                                calls::state_name(call.state),
                                call.caller_number,
                                call.callee_number
                            )
                        },
                        cli.output,
                    )
                    .map_err(server_error)
                }
                CallsAction::Transfer {
                    id,
                    number,
                    party,
                    trunk,
                    wait,
                } => {
                    let transfer = TransferCallRequest {
                        id,
                        party: match party {
                            Side::Caller => Party::Caller,
                            Side::Callee => Party::Callee,
                        } as i32,
                        number,
                        trunk: trunk.unwrap_or_default(),
                    };
                    let mut req =
                        streaming_request(transfer.clone(), token).map_err(server_error)?;
                    req.set_timeout(Duration::from_secs(wait.max(1)));
                    let mut done = client.transfer_call(req).await;
                    // As for get and hangup: the call may be on another node.
                    if matches!(&done, Err(s) if s.code() == tonic::Code::NotFound) {
                        for (_, addr) in cluster_peers(&channel, token).await {
                            let Ok(ch) = connect(&addr, &tls).await else {
                                continue;
                            };
                            let mut req =
                                streaming_request(transfer.clone(), token).map_err(server_error)?;
                            req.set_timeout(Duration::from_secs(wait.max(1)));
                            let there = CallServiceClient::new(ch).transfer_call(req).await;
                            let elsewhere = matches!(&there, Err(s)
                                if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unavailable));
                            if !elsewhere {
                                done = there;
                                break;
                            }
                        }
                    }
                    let done = done.map_err(status_error)?.into_inner();
                    let call = done.call.unwrap_or_default();
                    calls::print(
                        &serde_json::json!({ "call": calls::call_json(&call) }),
                        || calls::transferred_line(&call, party == Side::Caller),
                        cli.output,
                    )
                    .map_err(server_error)
                }
            }
        }
        Command::Trunks { action } => {
            let channel = connect(&cli.server, &tls).await?;
            let mut client = TrunkServiceClient::new(channel);
            let token = cli.token.as_deref();
            let listed = match action {
                TrunksAction::List => {
                    client
                        .list_trunks(
                            request(ListTrunksRequest::default(), token).map_err(server_error)?,
                        )
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .trunks
                }
                TrunksAction::Get { name } => vec![client
                    .get_trunk(
                        request(
                            GetTrunkRequest {
                                node_id: String::new(),
                                name,
                            },
                            token,
                        )
                        .map_err(server_error)?,
                    )
                    .await
                    .map_err(status_error)?
                    .into_inner()],
                TrunksAction::Apply { file } => {
                    let wanted = trunks::trunks_from(&file).map_err(|e| (2, e))?;
                    let mut done = Vec::new();
                    for trunk in wanted {
                        done.push(
                            client
                                .upsert_trunk(
                                    request(
                                        UpsertTrunkRequest {
                                            node_id: String::new(),
                                            trunk: Some(trunk),
                                        },
                                        token,
                                    )
                                    .map_err(server_error)?,
                                )
                                .await
                                .map_err(status_error)?
                                .into_inner(),
                        );
                    }
                    done
                }
                TrunksAction::Delete { name } => {
                    client
                        .delete_trunk(
                            request(
                                DeleteTrunkRequest {
                                    node_id: String::new(),
                                    name: name.clone(),
                                },
                                token,
                            )
                            .map_err(server_error)?,
                        )
                        .await
                        .map_err(status_error)?;
                    let doc = serde_json::json!({ "deleted": name });
                    return calls::print(&doc, || format!("{name}  deleted\n"), cli.output)
                        .map_err(server_error);
                }
            };
            let doc = serde_json::json!({
                "trunks": listed.iter().map(trunks::trunk_json).collect::<Vec<_>>(),
            });
            calls::print(&doc, || trunks::trunks_table(&listed), cli.output).map_err(server_error)
        }
        Command::Routes { action } => {
            let channel = connect(&cli.server, &tls).await?;
            let mut client = TrunkServiceClient::new(channel);
            let token = cli.token.as_deref();
            let table = match action {
                RoutesAction::List => client
                    .get_routes(request(GetRoutesRequest::default(), token).map_err(server_error)?)
                    .await
                    .map_err(status_error)?
                    .into_inner(),
                RoutesAction::Apply { file } => {
                    let table = trunks::table_from(&file).map_err(|e| (2, e))?;
                    client
                        .set_routes(
                            request(
                                SetRoutesRequest {
                                    node_id: String::new(),
                                    table: Some(table),
                                },
                                token,
                            )
                            .map_err(server_error)?,
                        )
                        .await
                        .map_err(status_error)?
                        .into_inner()
                }
            };
            calls::print(
                &trunks::table_json(&table),
                || trunks::routes_table(&table),
                cli.output,
            )
            .map_err(server_error)
        }
        Command::Node { action } => {
            let channel = connect(&cli.server, &tls).await?;
            let mut client = NodeServiceClient::new(channel);
            let token = cli.token.as_deref();
            let node = match action {
                NodeAction::List => {
                    let listed = client
                        .list_nodes(request(ListNodesRequest {}, token).map_err(server_error)?)
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    return output::print_nodes(&listed, cli.output).map_err(server_error);
                }
                NodeAction::Get { node } => client
                    .get_node(
                        request(
                            GetNodeRequest {
                                node_id: node.unwrap_or_default(),
                            },
                            token,
                        )
                        .map_err(server_error)?,
                    )
                    .await
                    .map_err(status_error)?,
                NodeAction::Drain { node, shutdown } => client
                    .drain(
                        request(
                            DrainRequest {
                                node_id: node.unwrap_or_default(),
                                shutdown,
                            },
                            token,
                        )
                        .map_err(server_error)?,
                    )
                    .await
                    .map_err(status_error)?,
                NodeAction::Undrain { node } => client
                    .undrain(
                        request(
                            UndrainRequest {
                                node_id: node.unwrap_or_default(),
                            },
                            token,
                        )
                        .map_err(server_error)?,
                    )
                    .await
                    .map_err(status_error)?,
            };
            output::print_node(&node.into_inner(), cli.output).map_err(server_error)
        }
    }
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error and 0 for --help, as documented.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trunkctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("trunkctl: {message}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        assert_eq!(exit_code(&Status::not_found("x")), 3);
        assert_eq!(exit_code(&Status::invalid_argument("x")), 2);
        assert_eq!(exit_code(&Status::unavailable("x")), 1);
        assert_eq!(exit_code(&Status::failed_precondition("x")), 1);
    }

    #[test]
    fn server_defaults_to_the_nodes_default_admin_address() {
        let cli = Cli::try_parse_from(["trunkctl", "node", "get"]).unwrap();
        assert_eq!(cli.server, "127.0.0.1:50051");
        assert!(Cli::try_parse_from(["trunkctl", "node", "explode"]).is_err());
    }
}
