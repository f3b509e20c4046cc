//! `feature.env`: which of the target's environment variables the app starts with.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::decode::{ignored_unless, key, Decoder, KeySpec, Value};
use crate::document::NodeKind;
use crate::error::ConfigError;

/// Environment: the app starts with the target's environment variables (read from the
/// target process), laid over this machine's. `true` (default), `false`, or an object:
///
/// ```json
/// {
///   "feature": {
///     "env": {
///       "include": "DATABASE_*;API_URL",
///       "override": { "DATABASE_URL": "postgres://localhost:5432/dev" },
///       "unset": ["AWS_PROFILE"]
///     }
///   }
/// }
/// ```
///
/// Some variables are never copied from the target because they describe its file system
/// or tooling (`PATH`, `HOME`, `PWD`, `JAVA_HOME`, `PYTHONPATH`, … as in mirrord); name them in
/// `include` to copy them anyway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvConfig {
    /// Copy the target's variables at all. `false` leaves the local environment as it is
    /// (`override`, `unset` and `env_file` still apply).
    pub enabled: bool,
    /// `include`: copy only these variables. Patterns with `*` (any run of characters) and
    /// `?` (one character), as a list or as one `;`-separated string. Cannot be combined
    /// with `exclude`. Environment: `SCTRACE_ENV_INCLUDE`, `MIRRORD_OVERRIDE_ENV_VARS_INCLUDE`.
    pub include: Option<Vec<String>>,
    /// `exclude`: copy every variable except these (same pattern syntax as `include`).
    /// Environment: `SCTRACE_ENV_EXCLUDE`, `MIRRORD_OVERRIDE_ENV_VARS_EXCLUDE`.
    pub exclude: Option<Vec<String>>,
    /// `override`: set these variables to these values, whatever the target or the env file
    /// say.
    pub overrides: BTreeMap<String, String>,
    /// `unset`: remove these variables from the app's environment (letter case ignored:
    /// `AWS_PROFILE` also removes `aws_profile`).
    pub unset: Vec<String>,
    /// `env_file`: a dotenv file whose variables are laid over the target's. Environment:
    /// `SCTRACE_ENV_FILE`, `MIRRORD_OVERRIDE_ENV_VARS_FILE`.
    pub env_file: Option<PathBuf>,
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self::enabled(true)
    }
}

impl EnvConfig {
    /// What `"env": true` or `false` stands for.
    pub fn enabled(enabled: bool) -> Self {
        Self {
            enabled,
            include: None,
            exclude: None,
            overrides: BTreeMap::new(),
            unset: Vec::new(),
            env_file: None,
        }
    }
}

const KEYS: &[KeySpec] = &[
    key("include"),
    key("exclude"),
    key("override"),
    key("unset"),
    key("env_file"),
    ignored_unless(
        "load_from_process",
        "ignored: sctrace always reads the variables of the target process",
        |_| true,
    ),
    ignored_unless(
        "mapping",
        "ignored: sctrace does not rewrite variable values by pattern; use \"override\"",
        |node| matches!(&node.kind, NodeKind::Map(entries) if entries.is_empty()),
    ),
];

/// Splits mirrord's `"A;B"` form of a pattern list.
pub(crate) fn split_patterns(text: &str) -> Vec<String> {
    text.split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

fn patterns(d: &Decoder, value: &Value<'_>) -> Result<Vec<String>, ConfigError> {
    Ok(d.strings(value)?
        .iter()
        .flat_map(|text| split_patterns(text))
        .collect())
}

pub(crate) fn decode(d: &mut Decoder, value: &Value<'_>) -> Result<EnvConfig, ConfigError> {
    match &value.node.kind {
        NodeKind::Bool(enabled) => Ok(EnvConfig::enabled(*enabled)),
        NodeKind::Map(_) => {
            let mut fields = d.object(value, KEYS)?;
            let mut config = EnvConfig::default();
            if let Some(v) = fields.take("include") {
                config.include = Some(patterns(d, &v)?);
            }
            if let Some(v) = fields.take("exclude") {
                config.exclude = Some(patterns(d, &v)?);
            }
            if let Some(v) = fields.take("override") {
                config.overrides = d.string_map(&v)?;
            }
            if let Some(v) = fields.take("unset") {
                config.unset = patterns(d, &v)?;
            }
            if let Some(v) = fields.take("env_file") {
                config.env_file = Some(PathBuf::from(d.text(&v)?));
            }
            Ok(config)
        }
        _ => Err(d.expected(value, "true, false or an object")),
    }
}
