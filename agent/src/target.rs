//! The target: which network namespace the agent acts in, and which resolv.conf describes
//! how that namespace resolves names.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// A target network namespace and its resolver configuration.
#[derive(Debug, Clone)]
pub struct Target {
    /// The namespace file to `setns` into.
    pub netns: PathBuf,
    /// The resolv.conf the target's processes use.
    pub resolv_conf: ResolvConfFile,
    /// For logs.
    pub description: String,
}

impl Target {
    /// A namespace file. For /run/netns/NAME the resolver configuration is
    /// /etc/netns/NAME/resolv.conf when it exists (as `ip netns exec` would bind-mount it),
    /// else /etc/resolv.conf.
    pub fn netns(path: &Path) -> Target {
        let named = path
            .parent()
            .filter(|dir| *dir == Path::new("/run/netns") || *dir == Path::new("/var/run/netns"))
            .and_then(|_| path.file_name())
            .map(|name| Path::new("/etc/netns").join(name).join("resolv.conf"))
            .filter(|conf| conf.exists());
        Target {
            netns: path.to_path_buf(),
            resolv_conf: ResolvConfFile::Host(
                named.unwrap_or_else(|| PathBuf::from("/etc/resolv.conf")),
            ),
            description: format!("netns {}", path.display()),
        }
    }

    /// A process: its network namespace, and the resolv.conf in its root filesystem.
    pub fn pid(pid: u32) -> Target {
        Target {
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            resolv_conf: ResolvConfFile::InRoot(PathBuf::from(format!("/proc/{pid}/root"))),
            description: format!("pid {pid}"),
        }
    }
}

/// Largest resolv.conf read (glibc's own are a few hundred bytes).
pub const MAX_RESOLV_CONF: u64 = 64 * 1024;

/// Where the target's resolv.conf is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvConfFile {
    /// A file of the agent's own file system (for a namespace target, which has none of its
    /// own).
    Host(PathBuf),
    /// `etc/resolv.conf` inside a process's root directory (`/proc/PID/root`), resolved as
    /// that process would resolve it: `openat2` with `RESOLVE_IN_ROOT`, so that a symbolic
    /// link in the target — absolute or with `..` — stays inside the target's file system
    /// instead of leading into the agent's.
    InRoot(PathBuf),
}

/// Why the target's resolv.conf could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    /// Opening or reading failed (e.g. there is none).
    #[error("cannot read it")]
    Io(#[source] io::Error),
    /// It is a directory, a FIFO, a device…
    #[error("it is not a regular file")]
    NotAFile,
    /// It is larger than [`MAX_RESOLV_CONF`].
    #[error("it is larger than {MAX_RESOLV_CONF} bytes")]
    TooLarge,
}

impl ResolvConfError {
    /// Whether the file does not exist (no resolv.conf: the resolver defaults apply).
    pub fn is_missing(&self) -> bool {
        matches!(self, ResolvConfError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

impl ResolvConfFile {
    /// Opens the file as described above (never blocking on a FIFO, never a controlling
    /// terminal), checks it is a regular file no larger than [`MAX_RESOLV_CONF`], and returns
    /// its modification time.
    pub fn open(&self) -> Result<(File, Option<SystemTime>), ResolvConfError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let fd = match self {
            ResolvConfFile::Host(path) => open(path, flags, Mode::empty()),
            ResolvConfFile::InRoot(root) => {
                let root = open(
                    root,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| ResolvConfError::Io(e.into()))?;
                let how = OpenHow::new()
                    .flags(flags)
                    .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
                openat2(&root, "etc/resolv.conf", how)
            }
        }
        .map_err(|e| ResolvConfError::Io(e.into()))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(ResolvConfError::Io)?;
        if !meta.is_file() {
            return Err(ResolvConfError::NotAFile);
        }
        if meta.len() > MAX_RESOLV_CONF {
            return Err(ResolvConfError::TooLarge);
        }
        Ok((file, meta.modified().ok()))
    }

    /// Reads an opened file, at most [`MAX_RESOLV_CONF`] bytes.
    pub fn read(file: File) -> Result<Vec<u8>, ResolvConfError> {
        let mut bytes = Vec::new();
        file.take(MAX_RESOLV_CONF + 1)
            .read_to_end(&mut bytes)
            .map_err(ResolvConfError::Io)?;
        if bytes.len() as u64 > MAX_RESOLV_CONF {
            return Err(ResolvConfError::TooLarge);
        }
        Ok(bytes)
    }
}

impl fmt::Display for ResolvConfFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvConfFile::Host(path) => write!(f, "{}", path.display()),
            ResolvConfFile::InRoot(root) => {
                write!(f, "/etc/resolv.conf in the root {}", root.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_paths() {
        let t = Target::pid(42);
        assert_eq!(t.netns, Path::new("/proc/42/ns/net"));
        assert_eq!(
            t.resolv_conf,
            ResolvConfFile::InRoot("/proc/42/root".into())
        );
    }

    #[test]
    fn unnamed_netns_uses_etc_resolv_conf() {
        let host = ResolvConfFile::Host("/etc/resolv.conf".into());
        let t = Target::netns(Path::new("/tmp/some-ns-file"));
        assert_eq!(t.resolv_conf, host);
        let t = Target::netns(Path::new("/run/netns/sctrace-no-such-ns-config"));
        assert_eq!(t.resolv_conf, host);
    }

    /// A directory removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sctrace-root-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        Scratch(dir)
    }

    fn read(file: &ResolvConfFile) -> Result<String, ResolvConfError> {
        let (f, _) = file.open()?;
        Ok(String::from_utf8(ResolvConfFile::read(f)?).unwrap())
    }

    #[test]
    fn an_absolute_symlink_in_the_target_stays_in_the_target() {
        // The target's /etc/resolv.conf is a link to /<outside>: in the target that is its
        // own file; followed from the agent's side it would be the agent's.
        let root = scratch("link");
        let outside = scratch("outside");
        let agents = outside.0.join("resolv.conf");
        std::fs::write(&agents, "nameserver 10.9.9.9\n").unwrap();
        std::os::unix::fs::symlink(&agents, root.0.join("etc/resolv.conf")).unwrap();
        let in_target = root.0.join(agents.strip_prefix("/").unwrap());
        std::fs::create_dir_all(in_target.parent().unwrap()).unwrap();
        std::fs::write(&in_target, "nameserver 198.18.0.1\n").unwrap();
        let file = ResolvConfFile::InRoot(root.0.clone());
        assert_eq!(read(&file).unwrap(), "nameserver 198.18.0.1\n");
        // Without the target's own copy, the link leads nowhere: not to the agent's file.
        std::fs::remove_file(&in_target).unwrap();
        assert!(read(&file).unwrap_err().is_missing());
        // A `..` climb stays in the root too.
        std::fs::remove_file(root.0.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../..".to_owned() + agents.to_str().unwrap(),
            root.0.join("etc/resolv.conf"),
        )
        .unwrap();
        assert!(read(&file).unwrap_err().is_missing());
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let root = scratch("kinds");
        let file = ResolvConfFile::InRoot(root.0.clone());
        std::fs::create_dir(root.0.join("etc/resolv.conf")).unwrap();
        assert!(matches!(read(&file), Err(ResolvConfError::NotAFile)));
        std::fs::remove_dir(root.0.join("etc/resolv.conf")).unwrap();
        nix::unistd::mkfifo(&root.0.join("etc/resolv.conf"), Mode::S_IRWXU).unwrap();
        assert!(
            matches!(read(&file), Err(ResolvConfError::NotAFile)),
            "a FIFO is not waited on"
        );
        std::fs::remove_file(root.0.join("etc/resolv.conf")).unwrap();
        std::fs::write(root.0.join("etc/resolv.conf"), vec![b'#'; 70_000]).unwrap();
        assert!(matches!(read(&file), Err(ResolvConfError::TooLarge)));
        let host = ResolvConfFile::Host(root.0.join("etc/none"));
        assert!(read(&host).unwrap_err().is_missing());
    }
}
