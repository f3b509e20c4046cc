//! `sctrace`: parses the command line, runs the session, and exits with the program's status.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sctrace::cli::{Cli, Command};
use sctrace::events::Format;
use sctrace::session::Session;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
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
    let (command, outputs) = match cli.command {
        Command::Run(args) => {
            let mut outputs = Vec::new();
            if let Some(path) = &args.events {
                outputs.push((Format::Json, open_output(path)?));
            }
            (args.command, outputs)
        }
        Command::Trace(args) => {
            let mut outputs: Vec<(Format, Box<dyn Write + Send>)> =
                vec![(Format::Human, Box::new(io::stderr()))];
            if let Some(path) = &args.events {
                outputs.push((Format::Json, open_output(path)?));
            }
            (args.command, outputs)
        }
    };
    Session { command, outputs }.run().map_err(|err| Failure {
        code: err.exit_code(),
        message: err.to_string(),
    })
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
        .without_time()
        .init();
}
