//! The command line: `sctrace run`, `sctrace trace`.

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
}

/// `sctrace run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Write one JSON object per line for each observed call to FILE (`-` for stderr).
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
    }
}
