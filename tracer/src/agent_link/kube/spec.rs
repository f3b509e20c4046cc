//! The agent's Kubernetes objects, as pure data: the ephemeral container added to the
//! target pod, or the Job whose pod runs on the target's node. Everything sctrace sends
//! to the API server to start an agent is built here and checked field by field in tests.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EphemeralContainer, LocalObjectReference, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecurityContext, Toleration as KubeToleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sctrace_filter::config::{AgentConfig, Toleration};

use super::resolve::TargetPod;

/// The agent image sctrace uses unless `agent.image` says otherwise.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/sctrace/sctrace-agent";
/// The agent's tag: sctrace's own version (the protocol is only promised between builds of
/// one release).
pub const DEFAULT_IMAGE_TAG: &str = env!("CARGO_PKG_VERSION");
/// The label that names an agent's objects (the Job's pod is found by it).
pub const AGENT_LABEL: &str = "sctrace.dev/agent";
/// Where the agent binary is in the image (custom images must put it there too).
pub const AGENT_PATH: &str = "/usr/local/bin/sctrace-agent";
/// The capabilities the agent asks for: SYS_ADMIN to enter the target's network namespace,
/// SYS_PTRACE to open another process's /proc entries (namespace, root, environ), NET_ADMIN
/// for redirecting incoming traffic.
pub const CAPABILITIES: &[&str] = &["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"];
/// The agent waits at least this long for its session to connect (pod start, then the
/// port-forward), whatever `agent.ttl` says.
pub const MIN_IDLE_TIMEOUT_SECS: u64 = 30;

/// Everything that decides how the agent's objects look.
#[derive(Debug, Clone)]
pub struct AgentParams {
    /// Name of the ephemeral container, or of the Job (and prefix of its pod).
    pub name: String,
    /// Namespace of the Job (`agent.namespace`, else the target's).
    pub namespace: String,
    /// The image reference.
    pub image: String,
    /// The port the agent listens on (127.0.0.1 in its pod).
    pub port: u16,
    /// Seconds the agent waits for a session before it exits.
    pub idle_timeout: u64,
    /// The rest of the `agent` config.
    pub agent: AgentConfig,
}

impl AgentParams {
    /// Parameters for a session: `suffix` (random hex) makes the name unique and picks the
    /// port; `target_namespace` is where the target lives. The session token is in none of
    /// the objects: the agent reads it from its standard input, which sctrace writes to
    /// through the API server's attach once the agent runs.
    pub fn new(agent: &AgentConfig, suffix: &str, target_namespace: &str) -> Self {
        let n = u32::from_str_radix(suffix.get(..4).unwrap_or("0"), 16).unwrap_or(0);
        Self {
            name: format!("sctrace-agent-{suffix}"),
            namespace: agent
                .namespace
                .clone()
                .unwrap_or_else(|| target_namespace.to_owned()),
            image: agent
                .image
                .resolve(DEFAULT_IMAGE_REPOSITORY, DEFAULT_IMAGE_TAG),
            // 30000-59999: above the well-known and most registered ports an app in the
            // target pod (whose network an ephemeral agent shares) might use.
            port: 30_000 + (n % 30_000) as u16,
            idle_timeout: u64::from(agent.ttl).max(MIN_IDLE_TIMEOUT_SECS),
            agent: agent.clone(),
        }
    }

    /// The agent's command line for `target` (none: targetless, its own network).
    pub fn command(&self, target: Option<&TargetPod>) -> Vec<String> {
        let mut args = vec![
            AGENT_PATH.to_owned(),
            "--listen".to_owned(),
            format!("tcp:127.0.0.1:{}", self.port),
            "--once".to_owned(),
            "--token-stdin".to_owned(),
            "--idle-timeout".to_owned(),
            self.idle_timeout.to_string(),
            "--log-level".to_owned(),
            self.agent.log_level.clone(),
        ];
        match target {
            Some(pod) => args.extend(["--container-id".to_owned(), pod.container_id.clone()]),
            None => args.extend(["--netns".to_owned(), "/proc/self/ns/net".to_owned()]),
        }
        args
    }

    /// Root with the agent's capabilities (minus `disabled_capabilities`), or privileged.
    fn security_context(&self) -> SecurityContext {
        if self.agent.privileged {
            return SecurityContext {
                privileged: Some(true),
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                ..SecurityContext::default()
            };
        }
        let disabled: Vec<String> = self
            .agent
            .disabled_capabilities
            .iter()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_uppercase())
            .collect();
        let add = CAPABILITIES
            .iter()
            .filter(|c| !disabled.iter().any(|d| d == *c))
            .map(|c| (*c).to_owned())
            .collect();
        SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(add),
                drop: None,
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            ..SecurityContext::default()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.agent.labels.clone();
        labels.insert("app.kubernetes.io/name".into(), "sctrace-agent".into());
        labels.insert("app.kubernetes.io/managed-by".into(), "sctrace".into());
        labels.insert(AGENT_LABEL.into(), self.name.clone());
        labels
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        let mut annotations = BTreeMap::from([
            // The agent must not get a mesh sidecar: it would intercept its traffic.
            ("sidecar.istio.io/inject".to_owned(), "false".to_owned()),
            ("linkerd.io/inject".to_owned(), "disabled".to_owned()),
        ]);
        annotations.extend(self.agent.annotations.clone());
        annotations
    }

    /// The ephemeral container added to the target pod: it shares the pod's network and,
    /// through `targetContainerName`, the target container's process namespace, where the
    /// agent finds the container's process by its id.
    pub fn ephemeral_container(&self, target: &TargetPod) -> EphemeralContainer {
        EphemeralContainer {
            name: self.name.clone(),
            image: Some(self.image.clone()),
            image_pull_policy: Some(self.agent.image_pull_policy.clone()),
            command: Some(self.command(Some(target))),
            // The token comes on stdin, through the attach (see `new`); stdinOnce closes it
            // when sctrace detaches, so no one can write to it after.
            stdin: Some(true),
            stdin_once: Some(true),
            security_context: Some(self.security_context()),
            target_container_name: Some(target.container.clone()),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..EphemeralContainer::default()
        }
    }

    /// The Job whose pod runs the agent: on the target's node with the node's process
    /// namespace (`hostPID`) for a target, or anywhere `node_selector` allows when
    /// targetless. It is deleted `agent.ttl` seconds after the agent exits.
    pub fn job(&self, target: Option<&TargetPod>) -> Job {
        let container = Container {
            name: "sctrace-agent".to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some(self.agent.image_pull_policy.clone()),
            command: Some(self.command(target)),
            stdin: Some(true),
            stdin_once: Some(true),
            security_context: Some(self.security_context()),
            resources: self.agent.resources.as_ref().map(|r| ResourceRequirements {
                requests: quantities(&r.requests),
                limits: quantities(&r.limits),
                ..ResourceRequirements::default()
            }),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Container::default()
        };
        let tolerations = match &self.agent.tolerations {
            Some(list) => list.iter().map(toleration).collect(),
            None => vec![KubeToleration {
                operator: Some("Exists".to_owned()),
                ..KubeToleration::default()
            }],
        };
        let pod_spec = PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".to_owned()),
            host_pid: target.map(|_| true),
            node_name: target.map(|t| t.node.clone()),
            node_selector: match target {
                None if !self.agent.node_selector.is_empty() => {
                    Some(self.agent.node_selector.clone())
                }
                _ => None,
            },
            tolerations: Some(tolerations),
            service_account_name: self.agent.service_account.clone(),
            // The agent never calls the API server.
            automount_service_account_token: Some(self.agent.service_account.is_some()),
            priority_class_name: self.agent.priority_class.clone(),
            image_pull_secrets: (!self.agent.image_pull_secrets.is_empty()).then(|| {
                self.agent
                    .image_pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
            termination_grace_period_seconds: Some(5),
            ..PodSpec::default()
        };
        Job {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels()),
                annotations: Some(self.annotations()),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                ttl_seconds_after_finished: Some(i32::from(self.agent.ttl)),
                backoff_limit: Some(0),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        annotations: Some(self.annotations()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod_spec),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}

fn quantities(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

fn toleration(t: &Toleration) -> KubeToleration {
    KubeToleration {
        key: t.key.clone(),
        operator: t.operator.clone(),
        value: t.value.clone(),
        effect: t.effect.clone(),
        toleration_seconds: t.toleration_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sctrace_filter::config::{AgentImage, AgentResources};
    use serde_json::json;

    fn target() -> TargetPod {
        TargetPod {
            namespace: "shop".into(),
            name: "web-1".into(),
            node: "node-a".into(),
            container: "app".into(),
            container_id: "containerd://0123456789abcdef".into(),
        }
    }

    fn params(agent: AgentConfig) -> AgentParams {
        AgentParams::new(&agent, "1f2e3d4c", "shop")
    }

    #[test]
    fn names_port_image_and_timeout() {
        let p = params(AgentConfig::default());
        assert_eq!(p.name, "sctrace-agent-1f2e3d4c");
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.port, 30_000 + 0x1f2e);
        assert_eq!(
            p.image,
            format!(
                "ghcr.io/sctrace/sctrace-agent:{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(p.idle_timeout, 30, "ttl 1 still leaves time to connect");
        let p = params(AgentConfig {
            ttl: 120,
            namespace: Some("agents".into()),
            image: AgentImage::Full("registry.example/me/agent:dev".into()),
            ..AgentConfig::default()
        });
        assert_eq!(p.idle_timeout, 120);
        assert_eq!(p.namespace, "agents");
        assert_eq!(p.image, "registry.example/me/agent:dev");
        // Any suffix gives a port in range.
        for suffix in ["0000", "ffff", "7530", "x", ""] {
            let port = AgentParams::new(&AgentConfig::default(), suffix, "n").port;
            assert!((30_000..60_000).contains(&port), "{suffix}: {port}");
        }
    }

    #[test]
    fn ephemeral_container_field_by_field() {
        let p = params(AgentConfig::default());
        let c = serde_json::to_value(p.ephemeral_container(&target())).unwrap();
        let port = p.port;
        assert_eq!(
            c,
            json!({
                "name": "sctrace-agent-1f2e3d4c",
                "image": p.image,
                "imagePullPolicy": "IfNotPresent",
                "command": [
                    "/usr/local/bin/sctrace-agent", "--listen", format!("tcp:127.0.0.1:{port}"), "--once",
                    "--token-stdin", "--idle-timeout", "30", "--log-level", "info",
                    "--container-id", "containerd://0123456789abcdef"
                ],
                "stdin": true,
                "stdinOnce": true,
                "securityContext": {
                    "capabilities": {"add": ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]},
                    "runAsUser": 0,
                    "runAsNonRoot": false
                },
                "targetContainerName": "app",
                "terminationMessagePolicy": "FallbackToLogsOnError"
            })
        );
    }

    #[test]
    fn privileged_and_disabled_capabilities() {
        let p = params(AgentConfig {
            privileged: true,
            ..AgentConfig::default()
        });
        let c = serde_json::to_value(p.ephemeral_container(&target())).unwrap();
        assert_eq!(
            c["securityContext"],
            json!({"privileged": true, "runAsUser": 0, "runAsNonRoot": false})
        );
        let p = params(AgentConfig {
            disabled_capabilities: vec!["CAP_NET_ADMIN".into(), "sys_ptrace".into()],
            log_level: "debug".into(),
            ..AgentConfig::default()
        });
        let c = serde_json::to_value(p.ephemeral_container(&target())).unwrap();
        assert_eq!(
            c["securityContext"]["capabilities"],
            json!({"add": ["SYS_ADMIN"]})
        );
        assert_eq!(c["command"][8], "debug");
    }

    #[test]
    fn targeted_job_field_by_field() {
        let p = params(AgentConfig {
            ttl: 5,
            labels: BTreeMap::from([("team".into(), "payments".into())]),
            annotations: BTreeMap::from([("note".into(), "hi".into())]),
            node_selector: BTreeMap::from([("ignored".into(), "for targets".into())]),
            image_pull_secrets: vec!["regcred".into()],
            image_pull_policy: "Always".into(),
            resources: Some(AgentResources {
                requests: BTreeMap::from([("cpu".into(), "10m".into())]),
                limits: BTreeMap::from([("memory".into(), "64Mi".into())]),
            }),
            priority_class: Some("high".into()),
            ..AgentConfig::default()
        });
        let job = serde_json::to_value(p.job(Some(&target()))).unwrap();
        let labels = json!({
            "app.kubernetes.io/managed-by": "sctrace",
            "app.kubernetes.io/name": "sctrace-agent",
            "sctrace.dev/agent": "sctrace-agent-1f2e3d4c",
            "team": "payments"
        });
        let annotations = json!({
            "linkerd.io/inject": "disabled",
            "note": "hi",
            "sidecar.istio.io/inject": "false"
        });
        let port = p.port;
        assert_eq!(
            job,
            json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": "sctrace-agent-1f2e3d4c",
                    "namespace": "shop",
                    "labels": labels,
                    "annotations": annotations
                },
                "spec": {
                    "ttlSecondsAfterFinished": 5,
                    "backoffLimit": 0,
                    "template": {
                        "metadata": {"labels": labels, "annotations": annotations},
                        "spec": {
                            "containers": [{
                                "name": "sctrace-agent",
                                "image": p.image,
                                "imagePullPolicy": "Always",
                                "command": [
                                    "/usr/local/bin/sctrace-agent", "--listen", format!("tcp:127.0.0.1:{port}"),
                                    "--once", "--token-stdin", "--idle-timeout", "30", "--log-level", "info",
                                    "--container-id", "containerd://0123456789abcdef"
                                ],
                                "stdin": true,
                                "stdinOnce": true,
                                "resources": {
                                    "requests": {"cpu": "10m"},
                                    "limits": {"memory": "64Mi"}
                                },
                                "securityContext": {
                                    "capabilities": {"add": ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]},
                                    "runAsUser": 0,
                                    "runAsNonRoot": false
                                },
                                "terminationMessagePolicy": "FallbackToLogsOnError"
                            }],
                            "restartPolicy": "Never",
                            "hostPID": true,
                            "nodeName": "node-a",
                            "tolerations": [{"operator": "Exists"}],
                            "automountServiceAccountToken": false,
                            "priorityClassName": "high",
                            "imagePullSecrets": [{"name": "regcred"}],
                            "terminationGracePeriodSeconds": 5
                        }
                    }
                }
            })
        );
    }

    #[test]
    fn targetless_job_uses_its_own_network_and_the_node_selector() {
        let p = params(AgentConfig {
            node_selector: BTreeMap::from([("pool".into(), "dev".into())]),
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("dev".into()),
                effect: Some("NoSchedule".into()),
                toleration_seconds: None,
            }]),
            service_account: Some("sctrace".into()),
            ..AgentConfig::default()
        });
        let job = serde_json::to_value(p.job(None)).unwrap();
        let spec = &job["spec"]["template"]["spec"];
        assert_eq!(spec.get("hostPID"), None);
        assert_eq!(spec.get("nodeName"), None);
        assert_eq!(spec["nodeSelector"], json!({"pool": "dev"}));
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "dedicated", "operator": "Equal", "value": "dev", "effect": "NoSchedule"}])
        );
        assert_eq!(spec["serviceAccountName"], "sctrace");
        assert_eq!(spec["automountServiceAccountToken"], true);
        let command = &spec["containers"][0]["command"];
        assert_eq!(command[9], "--netns");
        assert_eq!(command[10], "/proc/self/ns/net");
        let none = params(AgentConfig {
            tolerations: Some(Vec::new()),
            ..AgentConfig::default()
        });
        let job = serde_json::to_value(none.job(None)).unwrap();
        assert_eq!(job["spec"]["template"]["spec"]["tolerations"], json!([]));
    }
}
