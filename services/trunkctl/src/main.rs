//! `trunkctl`, the operator CLI: a thin client of a node's gRPC admin API and nothing
//! else, so whatever it does a script can do with any gRPC client.
//!
//! Exit codes: 0 done; 1 the server failed or could not be reached; 2 usage (a wrong
//! command line, or a request the server found malformed); 3 not found.

mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use trunkline_proto::admin::v1::node_service_client::NodeServiceClient;
use trunkline_proto::admin::v1::{DrainRequest, GetNodeRequest, UndrainRequest};

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
    },
    /// Take new calls again.
    Undrain {
        #[arg(long)]
        node: Option<String>,
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

fn endpoint(server: &str) -> anyhow::Result<Endpoint> {
    let uri = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30)))
}

/// Wraps `message` with the bearer token, if any.
fn request<T>(message: T, token: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("--token: not a valid header value"))?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

async fn run(cli: Cli) -> Result<(), (u8, String)> {
    let server_error = |e: anyhow::Error| (1u8, format!("{e:#}"));
    let status_error = |s: Status| (exit_code(&s), format!("{:?}: {}", s.code(), s.message()));
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
        Command::Node { action } => {
            let channel: Channel = endpoint(&cli.server)
                .map_err(|e| (2, format!("--server {}: {e:#}", cli.server)))?
                .connect()
                .await
                .map_err(|e| (1, format!("cannot reach {}: {e}", cli.server)))?;
            let mut client = NodeServiceClient::new(channel);
            let token = cli.token.as_deref();
            let node = match action {
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
                NodeAction::Drain { node } => client
                    .drain(
                        request(
                            DrainRequest {
                                node_id: node.unwrap_or_default(),
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
