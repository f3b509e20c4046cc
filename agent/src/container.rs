//! Finding a container's process from its id, for an agent that runs beside the target
//! (a Job pod with `hostPID`, or an ephemeral container sharing the target's process
//! namespace): the container runtime puts every process of a container in a cgroup whose
//! path carries the container id (`…/cri-containerd-ID.scope`, `…/docker-ID.scope`,
//! `…/crio-ID.scope`, `…/kubepods/…/ID`), and `/proc/PID/cgroup` shows that path — relative
//! (`/../…`) when the agent has a cgroup namespace of its own, but still with the id in it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why no process was found for a container id.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id is not a container id as Kubernetes reports it.
    #[error("{0:?} is not a container id (expected at least 12 hexadecimal digits, optionally after RUNTIME://)")]
    BadId(String),
    /// The process table could not be listed.
    #[error("cannot list the processes in {path}")]
    ListProc {
        /// The proc directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No visible process belongs to the container.
    #[error("no process of container {id} is visible to the agent (the agent needs the node's process namespace: hostPID for a Job pod, or an ephemeral container targeting that container)")]
    NotFound {
        /// The container id.
        id: String,
    },
}

/// The bare id of `text`: `containerd://0123…` and `0123…` give `0123…`.
pub fn parse_id(text: &str) -> Result<String, ContainerError> {
    let id = text.rsplit_once("://").map_or(text, |(_, id)| id);
    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ContainerError::BadId(text.to_owned()))
    }
}

/// The main process of the container `id` among the processes under `proc_root` (normally
/// `/proc`): of the processes whose cgroup path names the container, the one whose parent is
/// not one of them (the container's first process); the lowest such pid if there are several.
pub fn find_pid(proc_root: &Path, id: &str) -> Result<u32, ContainerError> {
    let entries = fs::read_dir(proc_root).map_err(|source| ContainerError::ListProc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes exit while we look: unreadable ones are simply not members.
        let Ok(cgroup) = fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if cgroup_names_container(&cgroup, id) {
            let ppid = fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat));
            members.push((pid, ppid));
        }
    }
    let is_member = |pid: u32| members.iter().any(|(p, _)| *p == pid);
    members
        .iter()
        .filter(|(_, ppid)| !ppid.is_some_and(is_member))
        .map(|(pid, _)| *pid)
        .min()
        .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })
}

/// Whether a `/proc/PID/cgroup` text puts the process in the container `id`: some line's
/// path has a component that is the id or ends in `-ID` / `-ID.scope` (the runtimes' forms).
fn cgroup_names_container(cgroup: &str, id: &str) -> bool {
    cgroup.lines().any(|line| {
        // hierarchy-ID:controllers:path; the path may itself contain ':'.
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        path.split('/').any(|component| {
            let name = component.strip_suffix(".scope").unwrap_or(component);
            name == id || name.rsplit_once('-').is_some_and(|(_, tail)| tail == id)
        })
    })
}

/// The parent pid from a `/proc/PID/stat` line (the field after the parenthesised command,
/// which may itself contain spaces and parentheses).
fn parent_pid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a";

    #[test]
    fn ids_from_pod_status() {
        assert_eq!(parse_id(&format!("containerd://{ID}")).unwrap(), ID);
        assert_eq!(parse_id(&format!("cri-o://{ID}")).unwrap(), ID);
        assert_eq!(parse_id(&ID.to_uppercase()).unwrap(), ID);
        assert!(parse_id("containerd://").is_err());
        assert!(parse_id("abc").is_err());
        assert!(parse_id("docker://../../etc").is_err());
    }

    #[test]
    fn cgroup_paths_of_each_runtime() {
        for cgroup in [
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{ID}.scope\n"),
            format!("0::/../../kubepods-burstable-pod2.slice/crio-{ID}.scope\n"),
            format!("12:memory:/kubepods/besteffort/pod3/{ID}\n11:cpu:/kubepods/besteffort/pod3/{ID}\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
        ] {
            assert!(cgroup_names_container(&cgroup, ID), "{cgroup}");
        }
        // Another container of the same pod, and an id that is only a prefix of a component.
        assert!(!cgroup_names_container(
            "0::/kubepods.slice/cri-containerd-aaaaaaaaaaaa.scope\n",
            ID
        ));
        assert!(!cgroup_names_container(&format!("0::/x/{ID}ff\n"), ID));
        assert!(!cgroup_names_container("garbage without colons", ID));
    }

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parent_pid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_pid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_pid("nonsense"), None);
    }

    fn fake_proc(dir: &Path, pid: u32, ppid: u32, cgroup: &str) {
        let p = dir.join(pid.to_string());
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("cgroup"), cgroup).unwrap();
        fs::write(p.join("stat"), format!("{pid} (app x) S {ppid} 1 1 0")).unwrap();
    }

    #[test]
    fn finds_the_containers_first_process() {
        let dir = std::env::temp_dir().join(format!("sctrace-agent-proc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ours = format!("0::/kubepods/pod/cri-containerd-{ID}.scope\n");
        fake_proc(&dir, 900, 1, "0::/other\n");
        // The container's shim (not a member) started 4000, which forked 3000 (pid reuse).
        fake_proc(&dir, 4000, 899, &ours);
        fake_proc(&dir, 3000, 4000, &ours);
        fs::create_dir_all(dir.join("self")).unwrap();
        assert_eq!(find_pid(&dir, ID).unwrap(), 4000);
        let other = "0123456789abcdef0123";
        assert!(matches!(
            find_pid(&dir, other),
            Err(ContainerError::NotFound { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
        assert!(matches!(
            find_pid(&dir, ID),
            Err(ContainerError::ListProc { .. })
        ));
    }
}
