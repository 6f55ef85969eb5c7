//! Command line of the `trunkline` node binary.
//!
//! Deliberately small: everything an operator tunes lives in the typed configuration
//! (`config.rs`), so the same settings work from a file, the environment or a Helm chart.

use std::path::PathBuf;

use clap::Parser;

/// `trunkline [--config PATH] [--check-config]`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "trunkline",
    version,
    about = "Trunkline SIP session border controller node"
)]
pub struct Cli {
    /// TOML configuration file; without one the node runs on built-in defaults plus
    /// TRUNKLINE_* environment overrides.
    #[arg(short, long, value_name = "PATH", env = "TRUNKLINE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Load and validate the configuration, print the effective configuration as TOML and
    /// exit: 0 when valid, 1 when not. Lets CI and init containers reject a bad config before
    /// a rollout.
    #[arg(long)]
    pub check_config: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from(["trunkline", "--config", "/etc/t.toml", "--check-config"])
            .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/etc/t.toml")));
        assert!(cli.check_config);
    }
}
