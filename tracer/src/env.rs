//! `feature.env`: the environment the app starts with. The target's variables (read by the
//! agent from the target process) are laid over this machine's, filtered by `include` /
//! `exclude`; then the `env_file`'s variables, then `override`; `unset` removes last.
//!
//! The target's variables that would make a program here load or run something
//! ([`RUNS_CODE`](sctrace_filter::config::RUNS_CODE): `LD_PRELOAD`, `BASH_ENV`, `NODE_OPTIONS`, `PATH`, …) are not copied unless
//! `include` names them exactly: the target may be compromised, and sets its own
//! environment. sctrace lists the ones it left out, once, on stderr.
//!
//! [`compose`] is the whole rule as a pure function; [`fetch`] asks the agent and reads the
//! env file; [`TargetEnv::apply`] hands the result to the command that starts the app.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sctrace_filter::config::{runs_code, EnvConfig, Target};
use sctrace_protocol::{EnvQueryError, PeerText, SessionHandle};
use thiserror::Error;

/// Variables as `(name, value)` pairs.
pub type Vars = Vec<(OsString, OsString)>;

/// Variables never copied from the target unless `include` matches them: they describe the
/// target's file system, user or machine, and the app runs on this machine. (Those that
/// would also run code here are in [`RUNS_CODE`](sctrace_filter::config::RUNS_CODE), which is stricter.)
pub const NEVER_COPIED: &[&str] = &[
    "PWD",
    "OLDPWD",
    "SHLVL",
    "USER",
    "LOGNAME",
    "HOSTNAME",
    "TERM",
    "TMPDIR",
    "_",
    "VIRTUAL_ENV",
];

/// Variables of [`RUNS_CODE`](sctrace_filter::config::RUNS_CODE) that every target has and that were never copied (as in
/// mirrord): left out without a word, to keep the list on stderr to what is unusual.
const QUIETLY_LEFT_OUT: &[&str] = &["PATH", "HOME", "SHELL", "JAVA_HOME", "GOROOT", "GOPATH"];

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
    /// The target's variables left out because they would run code here ([`RUNS_CODE`](sctrace_filter::config::RUNS_CODE)),
    /// to tell the user; those of [`QUIETLY_LEFT_OUT`] are not listed.
    pub left_out: Vec<OsString>,
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
    let mut left_out = Vec::new();
    if config.enabled {
        for (name, value) in target {
            match copies(name, config) {
                Import::Yes => {
                    vars.insert(name.clone(), value.clone());
                    from_target += 1;
                }
                Import::No => {}
                Import::RunsCode => {
                    if !QUIETLY_LEFT_OUT
                        .iter()
                        .any(|n| n.as_bytes() == name.as_bytes())
                    {
                        left_out.push(name.clone());
                    }
                }
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
        left_out,
    }
}

/// Whether a target variable is copied.
#[derive(Debug, PartialEq, Eq)]
enum Import {
    Yes,
    No,
    /// `include`/`exclude` would copy it, but it would run code here.
    RunsCode,
}

/// Whether the target's variable `name` is copied under `config`.
fn copies(name: &OsStr, config: &EnvConfig) -> Import {
    let name = name.as_bytes();
    let matches_any = |patterns: &[String]| patterns.iter().any(|p| glob(p.as_bytes(), name));
    let wanted = match (&config.include, &config.exclude) {
        (Some(include), _) => matches_any(include),
        (None, _) if NEVER_COPIED.iter().any(|n| n.as_bytes() == name) => false,
        (None, Some(exclude)) => !matches_any(exclude),
        (None, None) => true,
    };
    if !wanted {
        return Import::No;
    }
    if runs_code(name).is_none() {
        return Import::Yes;
    }
    // Only a name written out in `include` brings one of these: a pattern is not a choice
    // of this very variable.
    let named = config
        .include
        .iter()
        .flatten()
        .any(|pattern| pattern.as_bytes() == name);
    if named {
        Import::Yes
    } else {
        Import::RunsCode
    }
}

/// The line that tells the user which of the target's variables were left out, if any.
pub fn left_out_message(env: &TargetEnv) -> Option<String> {
    if env.left_out.is_empty() {
        return None;
    }
    let names: Vec<String> = env
        .left_out
        .iter()
        .map(|n| PeerText(&n.to_string_lossy()).to_string())
        .collect();
    Some(format!(
        "feature.env: not imported from the target, because they would make programs on this machine load or run what the target chose: {}; name one in feature.env.include to import it anyway (docs/security.md)",
        names.join(", ")
    ))
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
    let env = compose(std::env::vars_os().collect(), &target_vars, &file, config);
    if let Some(message) = left_out_message(&env) {
        eprintln!("sctrace: {message}");
    }
    Ok(env)
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
        assert!(env.left_out.is_empty(), "PATH and HOME go unsaid");
    }

    #[test]
    fn variables_that_run_code_here_are_left_out_and_listed() {
        let target = vars(&[
            ("BASH_ENV", "/tmp/x.sh"),
            ("ENV", "/tmp/x.sh"),
            ("LD_AUDIT", "/tmp/x.so"),
            ("LD_PRELOAD", "/tmp/x.so"),
            ("NODE_OPTIONS", "--require /tmp/x.js"),
            ("PYTHONSTARTUP", "/tmp/x.py"),
            ("PERL5OPT", "-Mx"),
            ("RUBYOPT", "-rx"),
            ("_JAVA_OPTIONS", "-javaagent:/tmp/x.jar"),
            ("JDK_JAVA_OPTIONS", "-javaagent:/tmp/x.jar"),
            ("GCONV_PATH", "/tmp"),
            ("GIT_SSH_COMMAND", "sh /tmp/x"),
            ("BASH_FUNC_ls%%", "() { sh /tmp/x; }"),
            ("PATH", "/tmp:/usr/bin"),
            ("DATABASE_URL", "pg://db"),
            ("NODE_ENV", "production"),
        ]);
        let local = vars(&[
            ("PATH", "/usr/bin"),
            ("NODE_OPTIONS", "--max-old-space-size=4096"),
        ]);
        let env = compose(local, &target, &[], &EnvConfig::default());
        assert_eq!(get(&env, "DATABASE_URL"), Some("pg://db"));
        assert_eq!(get(&env, "NODE_ENV"), Some("production"));
        assert_eq!(get(&env, "PATH"), Some("/usr/bin"));
        assert_eq!(
            get(&env, "NODE_OPTIONS"),
            Some("--max-old-space-size=4096"),
            "ours stays"
        );
        for (name, _) in target[..13].iter().filter(|(n, _)| n != "NODE_OPTIONS") {
            assert_eq!(get(&env, name.to_str().unwrap()), None, "{name:?}");
        }
        assert_eq!(env.from_target, 2);
        assert_eq!(env.left_out.len(), 13, "all but PATH: {:?}", env.left_out);
        let message = left_out_message(&env).unwrap();
        assert!(
            message.contains("BASH_ENV, ENV, LD_AUDIT, LD_PRELOAD, NODE_OPTIONS"),
            "{message}"
        );
        // A pattern that matches them is not enough; naming one is.
        for include in [vec!["*".to_owned()], vec!["LD_*".to_owned()]] {
            let config = EnvConfig {
                include: Some(include),
                ..EnvConfig::default()
            };
            let env = compose(Vec::new(), &target, &[], &config);
            assert_eq!(get(&env, "LD_PRELOAD"), None);
        }
        let config = EnvConfig {
            include: Some(vec!["LD_PRELOAD".into(), "DATABASE_*".into()]),
            ..EnvConfig::default()
        };
        let env = compose(Vec::new(), &target, &[], &config);
        assert_eq!(get(&env, "LD_PRELOAD"), Some("/tmp/x.so"));
        assert_eq!(get(&env, "LD_AUDIT"), None);
        assert!(env.left_out.is_empty(), "include did not want the others");
        // exclude: the rest of the family is still left out.
        let config = EnvConfig {
            exclude: Some(vec!["NODE_*".into()]),
            ..EnvConfig::default()
        };
        let env = compose(Vec::new(), &target, &[], &config);
        assert_eq!(get(&env, "BASH_ENV"), None);
        assert!(!env.left_out.iter().any(|n| n == "NODE_OPTIONS"));
    }

    #[test]
    fn left_out_names_are_shown_escaped() {
        let target = vec![(OsString::from("LD_\x1b[2J"), OsString::from("x"))];
        let env = compose(Vec::new(), &target, &[], &EnvConfig::default());
        let message = left_out_message(&env).unwrap();
        assert!(message.contains("LD_\\u{1b}[2J"), "{message}");
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
            left_out: Vec::new(),
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
