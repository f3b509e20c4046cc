//! `sctrace`: parses the command line, runs the session, and exits with the program's status.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sctrace::cli::{Cli, Command, ConfigCommand};
use sctrace::events::Format;
use sctrace::session::Session;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    // A bug must not spill a backtrace over the program's terminal: one line, and the
    // supervisor answers the call it was handling (see supervisor/mod.rs).
    std::panic::set_hook(Box::new(|info| tracing::error!("internal error: {info}")));
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(Failure { message, code }) => {
            eprintln!("sctrace: {message}");
            ExitCode::from(code as u8)
        }
    }
}

/// A failure to report in one line, with the exit status to use.
struct Failure {
    message: String,
    code: i32,
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure {
            message: format!("{err:#}"),
            code: 125,
        }
    }
}

fn run(cli: Cli) -> Result<i32, Failure> {
    let mut quiet = false;
    let (command, outputs, relay) = match cli.command {
        Command::Run(args) => {
            let mut outputs = Vec::new();
            if let Some(path) = &args.events {
                outputs.push((Format::Json, open_output(path)?));
            }
            let relay = relay_config(args.config.as_deref(), args.target.as_deref())?;
            quiet = args.quiet;
            (args.command, outputs, relay)
        }
        Command::Trace(args) => {
            let mut outputs: Vec<(Format, Box<dyn Write + Send>)> =
                vec![(Format::Human, Box::new(io::stderr()))];
            if let Some(path) = &args.events {
                outputs.push((Format::Json, open_output(path)?));
            }
            (args.command, outputs, None)
        }
        Command::Explain(args) => return explain(&args),
        Command::Config(ConfigCommand::Check { file }) => return check_config(&file),
        Command::Doctor(args) if args.self_test_child => {
            return Ok(sctrace::doctor::self_test_child())
        }
        Command::Doctor(_) => {
            let report = sctrace::doctor::examine();
            print!("{}", report.render());
            return Ok(report.exit_code());
        }
    };
    Session {
        command,
        outputs,
        relay,
        quiet,
    }
    .run()
    .map_err(|err| Failure {
        code: err.exit_code(),
        message: err.to_string(),
    })
}

/// The config of a relaying session: the file, the environment and `--target` together.
/// `None` when nothing names a target or an agent: then sctrace only observes.
fn relay_config(
    file: Option<&Path>,
    target: Option<&str>,
) -> Result<Option<sctrace_filter::Config>, Failure> {
    let loaded = sctrace_filter::resolve(file, |name| std::env::var(name).ok(), target)
        .map_err(config_failure)?;
    for warning in &loaded.warnings {
        eprintln!("sctrace: warning: {warning}");
    }
    let config = loaded.config;
    let relays = file.is_some() || config.target.path.is_some() || config.agent.address.is_some();
    Ok(relays.then_some(config))
}

fn config_failure(err: sctrace_filter::ConfigError) -> Failure {
    Failure {
        message: err.to_string(),
        code: 125,
    }
}

/// `sctrace config check FILE`: the warnings, then `FILE: ok`; or the error.
fn check_config(file: &Path) -> Result<i32, Failure> {
    let loaded = sctrace_filter::load(file).map_err(config_failure)?;
    for warning in &loaded.warnings {
        eprintln!("sctrace: warning: {warning}");
    }
    println!("{}: ok", file.display());
    Ok(0)
}

/// `sctrace explain`: where a destination would go and why.
fn explain(args: &sctrace::cli::ExplainArgs) -> Result<i32, Failure> {
    let loaded = match &args.config {
        Some(file) => sctrace_filter::load(file).map_err(config_failure)?,
        None => sctrace_filter::resolve(None, |name| std::env::var(name).ok(), None)
            .map_err(config_failure)?,
    };
    let protocol = if args.udp {
        sctrace_filter::Protocol::Udp
    } else {
        sctrace_filter::Protocol::Tcp
    };
    let explanation = sctrace_filter::explain(&loaded.config, &args.destination, protocol)
        .map_err(|err| Failure {
            message: err.to_string(),
            code: 2,
        })?;
    println!("{explanation}");
    Ok(0)
}

/// Opens an events destination: `-` is stderr, anything else a file (created or truncated).
fn open_output(path: &Path) -> anyhow::Result<Box<dyn Write + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(io::stderr()));
    }
    let file = File::create(path)
        .with_context(|| format!("cannot create the events file {}", path.display()))?;
    Ok(Box::new(io::BufWriter::new(file)))
}

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_env("SCTRACE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        // Colours only for a terminal: logs often end up in files and CI output.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}
