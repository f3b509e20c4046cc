//! The command line: `sctrace run`, `sctrace trace`, `sctrace explain`, `sctrace config check`,
//! `sctrace doctor`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run a local program as if its network lived in a remote environment.
///
/// sctrace intercepts the program's socket calls with seccomp user notification: it works
/// for static binaries, Go programs and anything else that makes system calls, needs no root
/// and no preloading, and lets every other system call run at full speed.
#[derive(Debug, Parser)]
#[command(name = "sctrace", version, propagate_version = true)]
pub struct Cli {
    /// Log verbosity of sctrace itself (error, warn, info, debug, trace); SCTRACE_LOG
    /// takes a full tracing filter.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run PROGRAM under sctrace's supervisor.
    Run(RunArgs),
    /// Run PROGRAM and print one line per connect, bind, listen and address-carrying send
    /// on stderr: a network strace that needs no root.
    Trace(TraceArgs),
    /// Print where a connection to HOST_OR_ADDR[:PORT] would go under a config, and which
    /// rule decides, without running anything.
    Explain(ExplainArgs),
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check what this machine (or container) lets sctrace do, and say how to fix what is
    /// missing. Exits 0 when `sctrace run` can work here, 1 otherwise.
    Doctor(DoctorArgs),
}

/// `sctrace doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Internal: the program doctor's self-test starts under sctrace's filter.
    #[arg(long, hide = true)]
    pub self_test_child: bool,
}

/// `sctrace config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a config file (JSON, YAML or TOML, by extension) without running anything.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

/// `sctrace explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The config file (mirrord's format: JSON, YAML or TOML by extension).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Decide for UDP instead of TCP.
    #[arg(long)]
    pub udp: bool,

    /// The destination: a host name, an IPv4 address, or a bracketed IPv6 address,
    /// optionally with :PORT.
    #[arg(value_name = "HOST_OR_ADDR[:PORT]")]
    pub destination: String,
}

/// `sctrace run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file (mirrord's format: JSON, YAML or TOML by extension). With a target
    /// (here or via --target), the program's traffic is relayed through an agent in it.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The target, overriding the config's: netns/NAME, netns//PATH, pid/PID (and
    /// mirrord's pod/..., deployment/... forms).
    #[arg(long, value_name = "TARGET")]
    pub target: Option<String>,

    /// Write one JSON object per line for each observed call to FILE (`-` for stderr).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// Show no progress (cluster reached, agent ready, …) while the session starts.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub command: Vec<OsString>,
}

/// `sctrace trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Also write the events as JSON lines to FILE (`-` for stderr).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub command: Vec<OsString>,
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
    fn program_arguments_keep_their_dashes() {
        let cli =
            Cli::try_parse_from(["sctrace", "run", "--events", "-", "--", "curl", "-v", "--x"])
                .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.command, ["curl", "-v", "--x"]);
        assert_eq!(run.events.unwrap(), PathBuf::from("-"));
        let cli = Cli::try_parse_from(["sctrace", "trace", "ls", "-l"]).unwrap();
        let Command::Trace(trace) = cli.command else {
            panic!("not trace")
        };
        assert_eq!(trace.command, ["ls", "-l"]);
        let cli = Cli::try_parse_from([
            "sctrace", "run", "-c", "m.json", "--target", "netns/x", "--", "app",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.target.as_deref(), Some("netns/x"));
        assert_eq!(run.command, ["app"]);
    }
}
