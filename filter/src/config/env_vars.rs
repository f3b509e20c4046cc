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
/// or tooling (`PWD`, `HOSTNAME`, `TERM`, … as in mirrord); name them in `include` to copy
/// them anyway. Variables that would make a program on this machine load or run something
/// the target chose ([`RUNS_CODE`]: `LD_PRELOAD`, `BASH_ENV`, `NODE_OPTIONS`, `PATH`, …) are
/// not copied either, and `include` must name each one exactly (a pattern such as `LD_*` or
/// `*` is not enough); mirrord copies them, sctrace does not.
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

/// A family of variables that make programs on this machine load or run something, or
/// change what they trust: the target's values are not copied (see [`EnvConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvFamily {
    /// Who reads them.
    pub family: &'static str,
    /// Their names; a trailing `*` stands for any ending.
    pub names: &'static [&'static str],
    /// What they make run or load.
    pub runs: &'static str,
}

/// The variables the target's environment never brings to this machine unless `include`
/// names them exactly: a compromised target sets its own environment, and any of these
/// would let it run code on the developer's machine (or make the app trust what it should
/// not). docs/security.md shows the same table.
pub const RUNS_CODE: &[EnvFamily] = &[
    EnvFamily {
        family: "dynamic loader, C library",
        names: &[
            "LD_*",
            "GLIBC_TUNABLES",
            "MALLOC_*",
            "GCONV_PATH",
            "LOCPATH",
            "NLSPATH",
            "HOSTALIASES",
            "RESOLV_HOST_CONF",
        ],
        runs: "shared libraries and audit modules loaded into every dynamically linked program (LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH); allocator tunables and a trace file written (MALLOC_TRACE); character-set converters loaded as shared objects (GCONV_PATH); locale, message and host-alias files read",
    },
    EnvFamily {
        family: "shells",
        names: &[
            "BASH_ENV",
            "ENV",
            "BASH_FUNC_*",
            "SHELLOPTS",
            "BASHOPTS",
            "PS0",
            "PS1",
            "PS2",
            "PS4",
            "PROMPT_COMMAND",
            "IFS",
            "CDPATH",
            "GLOBIGNORE",
            "ZDOTDIR",
            "FPATH",
            "INPUTRC",
            "HISTFILE",
            "SHELL",
        ],
        runs: "a script every non-interactive bash runs (BASH_ENV) or every interactive sh runs (ENV); functions that replace commands (BASH_FUNC_*); options such as xtrace, with a PS4 whose command substitutions run; prompts and PROMPT_COMMAND; word splitting and cd targets; zsh's startup directory and autoload path; readline macros; history written elsewhere; the shell programs start",
    },
    EnvFamily {
        family: "search paths, home",
        names: &["PATH", "HOME", "XDG_*"],
        runs: "which program runs for every command name (PATH, which may name directories that on this machine are someone else's or writable); where programs read their startup files and configs (HOME, XDG_CONFIG_HOME: a .bashrc, git's config)",
    },
    EnvFamily {
        family: "Python",
        names: &["PYTHON*"],
        runs: "modules imported at startup (PYTHONPATH, PYTHONHOME, PYTHONUSERBASE's .pth files, PYTHONSTARTUP, PYTHONBREAKPOINT, PYTHONWARNINGS categories); every PYTHON* variable",
    },
    EnvFamily {
        family: "Node.js, npm",
        names: &[
            "NODE_OPTIONS",
            "NODE_PATH",
            "NODE_REPL_EXTERNAL_MODULE",
            "NODE_REPL_HISTORY",
            "NODE_EXTRA_CA_CERTS",
            "NODE_TLS_REJECT_UNAUTHORIZED",
            "npm_config_*",
            "NPM_CONFIG_*",
        ],
        runs: "modules every node process requires (NODE_OPTIONS --require), module paths, the REPL's module and history file; extra trusted CAs or no certificate checks; npm's script shell and node options",
    },
    EnvFamily {
        family: "Perl",
        names: &["PERL*"],
        runs: "modules loaded by every perl (PERL5OPT -M, PERL5LIB, PERLLIB), the debugger's code (PERL5DB), I/O layers",
    },
    EnvFamily {
        family: "Ruby",
        names: &["RUBY*", "GEM_*", "BUNDLE_*"],
        runs: "libraries every ruby requires (RUBYOPT -r, RUBYLIB); gem paths; the Gemfile bundler evaluates (BUNDLE_GEMFILE)",
    },
    EnvFamily {
        family: "Java and the JVM",
        names: &[
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
            "JAVA_OPTS",
            "JAVA_HOME",
            "CLASSPATH",
            "MAVEN_OPTS",
            "GRADLE_OPTS",
            "GRADLE_USER_HOME",
        ],
        runs: "options every JVM applies, -javaagent among them; the class path; which java runs; build tools' JVM options and init scripts",
    },
    EnvFamily {
        family: "other runtimes",
        names: &[
            "DOTNET_STARTUP_HOOKS",
            "DOTNET_ADDITIONAL_DEPS",
            "CORECLR_*",
            "LUA_*",
            "PHPRC",
            "PHP_INI_SCAN_DIR",
            "ERL_AFLAGS",
            "ERL_FLAGS",
            "ERL_ZFLAGS",
            "ERL_LIBS",
            "R_PROFILE",
            "R_PROFILE_USER",
            "R_ENVIRON",
            "R_ENVIRON_USER",
            "TCLLIBPATH",
            "EMACSLOADPATH",
        ],
        runs: ".NET startup hooks and profilers; Lua's init code and module paths; PHP ini files (auto_prepend_file); Erlang's -eval flags and libraries; R's profile scripts; Tcl and Emacs library paths",
    },
    EnvFamily {
        family: "compilers and build tools",
        names: &[
            "CC",
            "CXX",
            "CPP",
            "LD",
            "AR",
            "CFLAGS",
            "CXXFLAGS",
            "CPPFLAGS",
            "LDFLAGS",
            "MAKEFLAGS",
            "MFLAGS",
            "CGO_*",
            "GOFLAGS",
            "GOTOOLCHAIN",
            "GOPROXY",
            "GOSUMDB",
            "GONOSUMDB",
            "GONOSUMCHECK",
            "GOINSECURE",
            "GOENV",
            "GOROOT",
            "GOPATH",
            "GOBIN",
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "RUSTDOC",
            "RUSTDOCFLAGS",
            "CARGO_*",
            "PIP_*",
        ],
        runs: "the compiler and linker that run and their flags (plug-ins); make's flags (--eval); go's -toolexec, module proxy, checksum database and toolchain downloads; cargo's runners and rustc wrappers; pip's package index",
    },
    EnvFamily {
        family: "git, ssh, sudo",
        names: &[
            "GIT_*",
            "SSH_ASKPASS",
            "SSH_ASKPASS_REQUIRE",
            "SSH_AUTH_SOCK",
            "SUDO_ASKPASS",
        ],
        runs: "commands git runs (GIT_SSH_COMMAND, GIT_EXEC_PATH, GIT_ASKPASS, GIT_CONFIG_* setting core.fsmonitor or core.pager, GIT_DIR with its hooks): every GIT_* variable; password prompts run by ssh and sudo; the ssh agent asked to sign",
    },
    EnvFamily {
        family: "editors, pagers, browsers",
        names: &[
            "EDITOR",
            "VISUAL",
            "PAGER",
            "MANPAGER",
            "SYSTEMD_PAGER",
            "BROWSER",
            "LESS*",
            "VIMINIT",
            "GVIMINIT",
            "EXINIT",
            "MYVIMRC",
            "VIMRUNTIME",
        ],
        runs: "the program run to edit a file, page output or open a URL; less's input preprocessors (LESSOPEN, LESSCLOSE) and key files; vim's startup commands",
    },
    EnvFamily {
        family: "libraries with plug-ins",
        names: &[
            "OPENSSL_CONF",
            "OPENSSL_ENGINES",
            "OPENSSL_MODULES",
            "SSLKEYLOGFILE",
            "GTK_MODULES",
            "GTK3_MODULES",
            "GTK_PATH",
            "GIO_MODULE_DIR",
            "GIO_EXTRA_MODULES",
            "QT_PLUGIN_PATH",
            "QT_QPA_PLATFORM_PLUGIN_PATH",
            "GST_PLUGIN_PATH",
            "GST_PLUGIN_SYSTEM_PATH",
            "TERMINFO",
            "TERMINFO_DIRS",
            "TERMCAP",
        ],
        runs: "OpenSSL engines and providers (shared objects) named by its config; TLS session keys written to a file; GTK, GIO, Qt and GStreamer modules; terminal descriptions",
    },
    EnvFamily {
        family: "tools' credential helpers",
        names: &["KUBECONFIG", "AWS_CONFIG_FILE", "DOCKER_CONFIG", "DOCKER_HOST"],
        runs: "configs whose entries run commands: kubectl's exec credential plugins, AWS credential_process, docker credential helpers; the docker daemon talked to",
    },
];

/// The family of [`RUNS_CODE`] that `name` belongs to, if any.
pub fn runs_code(name: &[u8]) -> Option<&'static EnvFamily> {
    RUNS_CODE.iter().find(|family| {
        family
            .names
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix.as_bytes()),
                None => name == pattern.as_bytes(),
            })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_match_names_and_prefixes() {
        assert_eq!(
            runs_code(b"LD_PRELOAD").map(|f| f.family),
            Some("dynamic loader, C library")
        );
        assert_eq!(
            runs_code(b"BASH_FUNC_ls%%").map(|f| f.family),
            Some("shells")
        );
        assert!(runs_code(b"PYTHONSTARTUP").is_some());
        assert!(runs_code(b"npm_config_script_shell").is_some());
        assert!(runs_code(b"GIT_SSH_COMMAND").is_some());
        assert!(runs_code(b"ENV").is_some());
        // Near misses stay importable.
        for name in [
            "ENVIRONMENT",
            "NODE_ENV",
            "LDAP_URL",
            "DATABASE_URL",
            "CCACHE",
            "PATHS",
        ] {
            assert_eq!(runs_code(name.as_bytes()), None, "{name}");
        }
    }

    #[test]
    fn the_security_doc_lists_every_family() {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"));
        for family in RUNS_CODE {
            assert!(
                doc.contains(family.family),
                "docs/security.md lacks {}",
                family.family
            );
            for name in family.names {
                assert!(
                    doc.contains(&format!("`{name}`")),
                    "docs/security.md lacks `{name}` ({})",
                    family.family
                );
            }
        }
    }
}
