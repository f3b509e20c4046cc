//! `feature.env`: the environment the app starts with. The target's variables (read by the
//! agent from the target process) are laid over this machine's, filtered by `include` /
//! `exclude`; then the `env_file`'s variables, then `override`; `unset` removes last.
//!
//! [`compose`] is the whole rule as a pure function; [`fetch`] asks the agent and reads the
//! env file; [`TargetEnv::apply`] hands the result to the command that starts the app.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sctrace_filter::config::{EnvConfig, Target};
use sctrace_protocol::{EnvQueryError, SessionHandle};
use thiserror::Error;

/// Variables as `(name, value)` pairs.
pub type Vars = Vec<(OsString, OsString)>;

/// Variables never copied from the target unless `include` names them: they describe the
/// target's file system, shell, user or machine, and the app runs on this machine.
pub const NEVER_COPIED: &[&str] = &[
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "SHELL",
    "SHLVL",
    "USER",
    "LOGNAME",
    "HOSTNAME",
    "TERM",
    "TMPDIR",
    "_",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "JAVA_HOME",
    "JAVA_TOOL_OPTIONS",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "GOROOT",
    "GOPATH",
    "NODE_PATH",
    "RUBYLIB",
    "GEM_HOME",
    "GEM_PATH",
];

/// Why the app's environment could not be assembled.
#[derive(Debug, Error)]
pub enum EnvError {
    /// The agent could not give the target's environment.
    #[error("feature.env: cannot read the environment of the target {target}: {source} (set \"feature\": {{\"env\": false}} to start the program with this machine's environment)")]
    Target {
        /// The target, as written.
        target: String,
        /// Why.
        #[source]
        source: EnvQueryError,
    },
    /// The env file could not be read.
    #[error("feature.env.env_file: cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The env file is not in dotenv form.
    #[error("feature.env.env_file: {path} line {line}: {problem}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The environment the app starts with, once assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEnv {
    /// Every variable of the app, in name order.
    pub vars: Vars,
    /// How many of them came from the target.
    pub from_target: usize,
}

impl TargetEnv {
    /// Makes `cmd` start with exactly these variables.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env_clear();
        cmd.envs(self.vars.iter().map(|(n, v)| (n, v)));
    }
}

/// Assembles the app's environment: `local` (this machine's), over it the `target`'s
/// variables that pass `include`/`exclude` (and [`NEVER_COPIED`]), then `file` (the parsed
/// env file), then `override`; finally `unset` removes names (letter case ignored). With
/// `enabled: false` nothing is taken from the target.
pub fn compose(
    local: Vars,
    target: &[(OsString, OsString)],
    file: &[(OsString, OsString)],
    config: &EnvConfig,
) -> TargetEnv {
    let mut vars: BTreeMap<OsString, OsString> = local.into_iter().collect();
    let mut from_target = 0;
    if config.enabled {
        for (name, value) in target {
            if copies(name, config) {
                vars.insert(name.clone(), value.clone());
                from_target += 1;
            }
        }
    }
    for (name, value) in file {
        vars.insert(name.clone(), value.clone());
    }
    for (name, value) in &config.overrides {
        vars.insert(name.into(), value.into());
    }
    let unset: Vec<Vec<u8>> = config
        .unset
        .iter()
        .map(|n| n.as_bytes().to_ascii_lowercase())
        .collect();
    vars.retain(|name, _| !unset.contains(&name.as_bytes().to_ascii_lowercase()));
    // Variables removed again by unset or replaced by file/override still count as copied:
    // the count is for messages ("N variables from the target").
    TargetEnv {
        vars: vars.into_iter().collect(),
        from_target,
    }
}

/// Whether the target's variable `name` is copied under `config`.
fn copies(name: &OsStr, config: &EnvConfig) -> bool {
    let name = name.as_bytes();
    let matches_any = |patterns: &[String]| patterns.iter().any(|p| glob(p.as_bytes(), name));
    if let Some(include) = &config.include {
        return matches_any(include);
    }
    if NEVER_COPIED.iter().any(|n| n.as_bytes() == name) {
        return false;
    }
    match &config.exclude {
        Some(exclude) => !matches_any(exclude),
        None => true,
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of bytes and `?` one byte.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with one backtrack point (the last `*`): linear in practice, no
    // recursion on hostile patterns.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

/// Parses a dotenv file: `NAME=VALUE` lines, optionally after `export `; `#` comments and
/// blank lines; values in double quotes (with `\n`, `\t`, `\"`, `\\` escapes), in single
/// quotes (taken as written), or bare (trimmed, a ` #` starts a comment).
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vars, EnvError> {
    let mut vars = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let err = |problem| EnvError::ParseFile {
            path: path.to_owned(),
            line: index + 1,
            problem,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| err("expected NAME=VALUE"))?;
        let name = name.trim();
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            return Err(err(
                "the name must be letters, digits, '_' or '.', not starting with a digit",
            ));
        }
        let value = value.trim();
        let value = if let Some(rest) = value.strip_prefix('"') {
            unquote_double(rest).ok_or_else(|| err("unterminated double quote"))?
        } else if let Some(rest) = value.strip_prefix('\'') {
            rest.split_once('\'')
                .map(|(inner, _)| inner.to_owned())
                .ok_or_else(|| err("unterminated single quote"))?
        } else {
            value.split(" #").next().unwrap_or("").trim_end().to_owned()
        };
        vars.push((OsString::from(name), OsString::from(value)));
    }
    Ok(vars)
}

/// The contents of a double-quoted value up to its closing quote, escapes resolved.
fn unquote_double(rest: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// Whether sctrace asks the agent for the environment at all: only when `feature.env` is
/// enabled and the target has a process (a process, or a pod's container; a bare network
/// namespace and a targetless agent have none).
pub fn wants_target_env(target: Option<&Target>, config: &EnvConfig) -> bool {
    config.enabled
        && matches!(
            target,
            Some(
                Target::Pid(_)
                    | Target::Pod { .. }
                    | Target::Deployment { .. }
                    | Target::StatefulSet { .. }
            )
        )
}

/// Assembles the app's environment for a session: asks the agent for the target's variables
/// (when [`wants_target_env`]), reads the env file, and [`compose`]s them with this
/// process's environment. A bare network namespace target contributes nothing; when the
/// config asks for specific variables (`include`/`exclude`), a warning says so.
pub async fn fetch(
    handle: &SessionHandle,
    target: Option<&Target>,
    config: &EnvConfig,
) -> Result<TargetEnv, EnvError> {
    let target_vars = if wants_target_env(target, config) {
        let vars = handle
            .target_env()
            .await
            .map_err(|source| EnvError::Target {
                target: target.map_or_else(|| "targetless".to_owned(), ToString::to_string),
                source,
            })?;
        vars.into_iter()
            .map(|(n, v)| {
                (
                    OsString::from_vec(n.to_vec()),
                    OsString::from_vec(v.to_vec()),
                )
            })
            .collect()
    } else {
        if config.enabled && (config.include.is_some() || config.exclude.is_some()) {
            let target = target.map_or_else(|| "targetless".to_owned(), ToString::to_string);
            eprintln!(
                "sctrace: warning: feature.env: the target {target} has no process, so no variables come from it; override, unset and env_file still apply"
            );
        }
        Vec::new()
    };
    let file = match &config.env_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| EnvError::ReadFile {
                path: path.clone(),
                source,
            })?;
            parse_env_file(path, &text)?
        }
        None => Vec::new(),
    };
    Ok(compose(
        std::env::vars_os().collect(),
        &target_vars,
        &file,
        config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs.iter().map(|(n, v)| (n.into(), v.into())).collect()
    }

    fn get<'a>(env: &'a TargetEnv, name: &str) -> Option<&'a str> {
        env.vars
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str())
    }

    #[test]
    fn globs() {
        assert!(glob(b"DATABASE_*", b"DATABASE_URL"));
        assert!(glob(b"DATABASE_*", b"DATABASE_"));
        assert!(!glob(b"DATABASE_*", b"DATABASE"));
        assert!(glob(b"A?C", b"ABC"));
        assert!(!glob(b"A?C", b"AC"));
        assert!(glob(b"*_HOST", b"REDIS_SERVICE_HOST"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(!glob(b"api_url", b"API_URL"), "case matters");
        // A pathological pattern finishes promptly.
        let text = vec![b'a'; 5000];
        assert!(!glob(b"*a*a*a*a*a*a*b", &text));
    }

    #[test]
    fn target_over_local_with_the_never_copied_kept_local() {
        let local = vars(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/home/me"),
            ("EDITOR", "vi"),
            ("API_URL", "local"),
        ]);
        let target = vars(&[
            ("PATH", "/app/bin"),
            ("HOME", "/root"),
            ("API_URL", "http://api"),
            ("DB", "pg"),
        ]);
        let env = compose(local, &target, &[], &EnvConfig::default());
        assert_eq!(get(&env, "PATH"), Some("/usr/bin"));
        assert_eq!(get(&env, "HOME"), Some("/home/me"));
        assert_eq!(get(&env, "EDITOR"), Some("vi"));
        assert_eq!(get(&env, "API_URL"), Some("http://api"));
        assert_eq!(get(&env, "DB"), Some("pg"));
        assert_eq!(env.from_target, 2);
    }

    #[test]
    fn include_picks_only_those_even_the_never_copied() {
        let config = EnvConfig {
            include: Some(vec!["DATABASE_*".into(), "PATH".into()]),
            ..EnvConfig::default()
        };
        let target = vars(&[
            ("DATABASE_URL", "pg://x"),
            ("API_URL", "http://api"),
            ("PATH", "/app/bin"),
        ]);
        let env = compose(vars(&[("PATH", "/usr/bin")]), &target, &[], &config);
        assert_eq!(get(&env, "DATABASE_URL"), Some("pg://x"));
        assert_eq!(get(&env, "API_URL"), None);
        assert_eq!(get(&env, "PATH"), Some("/app/bin"));
    }

    #[test]
    fn exclude_leaves_those_out() {
        let config = EnvConfig {
            exclude: Some(vec!["SECRET_*".into()]),
            ..EnvConfig::default()
        };
        let target = vars(&[
            ("SECRET_KEY", "k"),
            ("API_URL", "http://api"),
            ("HOME", "/root"),
        ]);
        let env = compose(vars(&[("SECRET_KEY", "mine")]), &target, &[], &config);
        assert_eq!(get(&env, "SECRET_KEY"), Some("mine"));
        assert_eq!(get(&env, "API_URL"), Some("http://api"));
        assert_eq!(get(&env, "HOME"), None);
    }

    #[test]
    fn file_then_override_then_unset() {
        let mut config = EnvConfig::default();
        config
            .overrides
            .insert("DATABASE_URL".into(), "postgres://localhost/dev".into());
        config.unset = vec!["AWS_PROFILE".into()];
        let target = vars(&[
            ("DATABASE_URL", "pg://prod"),
            ("FROM_FILE", "target"),
            ("aws_profile", "prod"),
        ]);
        let file = vars(&[("FROM_FILE", "file"), ("DATABASE_URL", "file")]);
        let env = compose(vars(&[("AWS_PROFILE", "me")]), &target, &file, &config);
        assert_eq!(get(&env, "DATABASE_URL"), Some("postgres://localhost/dev"));
        assert_eq!(get(&env, "FROM_FILE"), Some("file"));
        assert_eq!(get(&env, "AWS_PROFILE"), None);
        assert_eq!(get(&env, "aws_profile"), None);
    }

    #[test]
    fn disabled_takes_nothing_from_the_target_but_still_overrides() {
        let mut config = EnvConfig::enabled(false);
        config.overrides.insert("X".into(), "1".into());
        let env = compose(
            vars(&[("A", "local")]),
            &vars(&[("A", "target"), ("B", "t")]),
            &[],
            &config,
        );
        assert_eq!(env.vars, vars(&[("A", "local"), ("X", "1")]));
        assert_eq!(env.from_target, 0);
    }

    #[test]
    fn non_utf8_values_pass_through() {
        let target = vec![(OsString::from("RAW"), OsString::from_vec(vec![0xff, b'x']))];
        let env = compose(Vec::new(), &target, &[], &EnvConfig::default());
        assert_eq!(env.vars[0].1.as_bytes(), [0xff, b'x']);
    }

    #[test]
    fn env_files() {
        let path = Path::new("dev.env");
        let text = "# comment\n\nexport A=1\nB = two words # note\nC=\"line\\nnext \\\"q\\\"\"\nD='raw \\n $x'\nE=\n";
        let parsed = parse_env_file(path, text).unwrap();
        assert_eq!(
            parsed,
            vars(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "line\nnext \"q\""),
                ("D", "raw \\n $x"),
                ("E", "")
            ])
        );
        let err = parse_env_file(path, "A=1\nnot a line\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "feature.env.env_file: dev.env line 2: expected NAME=VALUE"
        );
        let err = parse_env_file(path, "1A=x").unwrap_err();
        assert!(err.to_string().contains("line 1: the name must be"));
        let err = parse_env_file(path, "A=\"open").unwrap_err();
        assert!(err.to_string().ends_with("unterminated double quote"));
        let err = parse_env_file(path, "A='open").unwrap_err();
        assert!(err.to_string().ends_with("unterminated single quote"));
    }

    #[test]
    fn only_targets_with_a_process_are_asked() {
        let netns: Target = "netns/x".parse().unwrap();
        let pid: Target = "pid/7".parse().unwrap();
        let on = EnvConfig::default();
        assert!(!wants_target_env(Some(&netns), &on));
        assert!(wants_target_env(Some(&pid), &on));
        assert!(!wants_target_env(None, &on));
        assert!(!wants_target_env(Some(&Target::Targetless), &on));
        let pod: Target = "deployment/web/container/app".parse().unwrap();
        assert!(wants_target_env(Some(&pod), &on));
        assert!(!wants_target_env(Some(&pid), &EnvConfig::enabled(false)));
    }

    #[test]
    fn apply_replaces_the_whole_environment() {
        let env = TargetEnv {
            vars: vars(&[("ONLY", "this")]),
            from_target: 1,
        };
        let mut cmd = Command::new("true");
        cmd.env("GONE", "x");
        env.apply(&mut cmd);
        let set: Vec<_> = cmd
            .get_envs()
            .filter_map(|(n, v)| v.map(|v| (n.to_owned(), v.to_owned())))
            .collect();
        assert_eq!(set, vars(&[("ONLY", "this")]));
    }
}
