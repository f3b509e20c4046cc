//! Where a run's config comes from, in order of precedence, lowest first: the file (or the
//! defaults), the environment ([`apply_env`]), `--target`; then the cross-key checks. The
//! only module of this crate that does I/O: it reads the config file.

use std::io::Read;
use std::path::Path;

use crate::config::{decode_text, Config, Loaded};
use crate::document::Format;
use crate::error::ConfigError;
use crate::overrides::apply_env;

/// Largest config file read (mirrord configs are a few kilobytes).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads the config file at `path` (its format chosen by extension) and checks it.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let (format, text) = read_file(path)?;
    parse_str(&text, format, &path.display().to_string())
}

/// Reads a config from text; `origin` names it in messages (usually the file name).
/// Checks what can be checked from the text alone; a missing target is allowed (the
/// environment or `--target` may give one). Use [`resolve`] to get the final config.
pub fn parse_str(text: &str, format: Format, origin: &str) -> Result<Loaded, ConfigError> {
    let mut loaded = decode_text(text, format, origin)?;
    let more = loaded.config.check(false)?;
    loaded.warnings.extend(more);
    Ok(loaded)
}

/// The config a run uses: the file (if any), then environment variables (`lookup` returns a
/// variable's value; see [`apply_env`] for precedence), then `target` (the `--target`
/// option), then the checks of [`Config::validate`].
pub fn resolve(
    file: Option<&Path>,
    lookup: impl Fn(&str) -> Option<String>,
    target: Option<&str>,
) -> Result<Loaded, ConfigError> {
    let mut loaded = match file {
        Some(path) => {
            let (format, text) = read_file(path)?;
            decode_text(&text, format, &path.display().to_string())?
        }
        None => Loaded {
            config: Config::default(),
            warnings: Vec::new(),
        },
    };
    apply_env(&mut loaded.config, lookup)?;
    if let Some(target) = target {
        loaded.config.set_target(target)?;
    }
    let more = loaded.config.validate()?;
    loaded.warnings.extend(more);
    Ok(loaded)
}

/// The format `path`'s extension names, and the file's text (at most `MAX_FILE_BYTES`).
fn read_file(path: &Path) -> Result<(Format, String), ConfigError> {
    let format = Format::from_path(path).map_err(|extension| ConfigError::Extension {
        path: path.to_owned(),
        extension,
    })?;
    // The path as tried, so that a relative one says where it was looked for.
    let tried = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let read_error = |source| ConfigError::Read {
        path: tried.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(read_error(std::io::Error::other(format!(
            "the file is larger than {} MiB",
            MAX_FILE_BYTES / 1024 / 1024
        ))));
    }
    Ok((format, text))
}
