//! From a target (`pod/…`, `deployment/…`, `statefulset/…`) to the pod, container and node
//! the agent works with: the pod must be running, the container chosen without guessing
//! between several candidates, and running with a container id (which the Job-mode agent
//! looks for in the node's /proc).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use sctrace_filter::config::Target;

use super::client::ClusterInfo;
use super::error::{is_not_found, Call, KubeError};

/// Containers injected by service meshes and secret managers: never the target unless named.
pub const SIDECARS: &[&str] = &[
    "istio-proxy",
    "istio-init",
    "linkerd-proxy",
    "linkerd-init",
    "vault-agent",
    "vault-agent-init",
    "consul-dataplane",
    "envoy",
    "aws-appmesh-envoy",
];

/// The pod and container the agent attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPod {
    /// Its namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// The target container.
    pub container: String,
    /// The container's id as the pod status gives it (`containerd://…`).
    pub container_id: String,
}

/// Finds the running pod and container for `target` in `namespace`.
pub async fn resolve(
    cluster: &ClusterInfo,
    namespace: &str,
    target: &Target,
) -> Result<TargetPod, KubeError> {
    let (client, url) = (&cluster.client, cluster.url.as_str());
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let (pod, container) = match target {
        Target::Pod { name, container } => {
            let pod = pods.get(name).await.map_err(|err| {
                if is_not_found(&err) {
                    KubeError::PodNotFound {
                        name: name.clone(),
                        namespace: namespace.to_owned(),
                    }
                } else {
                    Call {
                        verb: "get",
                        resource: "pods",
                        namespace,
                        doing: format!("reading pod {namespace}/{name}"),
                    }
                    .error(err, url)
                }
            })?;
            (pod, container.as_deref())
        }
        Target::Deployment { name, container } => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            let selector = workload_get(&api, "deployment", "deployments", name, namespace, url)
                .await?
                .spec
                .map(|s| s.selector);
            let pod = pick_pod(&pods, "deployment", name, namespace, selector, url).await?;
            (pod, container.as_deref())
        }
        Target::StatefulSet { name, container } => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
            let selector = workload_get(&api, "statefulset", "statefulsets", name, namespace, url)
                .await?
                .spec
                .map(|s| s.selector);
            let pod = pick_pod(&pods, "statefulset", name, namespace, selector, url).await?;
            (pod, container.as_deref())
        }
        Target::Targetless | Target::Netns(_) | Target::Pid(_) => {
            return Err(KubeError::NotRunning {
                what: target.to_string(),
                state: "not a Kubernetes workload".to_owned(),
            })
        }
    };
    target_in(&pod, namespace, container)
}

async fn workload_get<K>(
    api: &Api<K>,
    kind: &'static str,
    resource: &'static str,
    name: &str,
    namespace: &str,
    url: &str,
) -> Result<K, KubeError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get(name).await.map_err(|err| {
        if is_not_found(&err) {
            KubeError::WorkloadNotFound {
                kind,
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            }
        } else {
            Call {
                verb: "get",
                resource,
                namespace,
                doing: format!("reading {kind} {namespace}/{name}"),
            }
            .error(err, url)
        }
    })
}

/// A running pod of a workload: the first by name that is running and not terminating,
/// preferring ready ones.
async fn pick_pod(
    pods: &Api<Pod>,
    kind: &'static str,
    name: &str,
    namespace: &str,
    selector: Option<LabelSelector>,
    url: &str,
) -> Result<Pod, KubeError> {
    let selector = selector
        .as_ref()
        .map(selector_string)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| KubeError::NoRunningPod {
            kind,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            seen: "it has no pod selector".to_owned(),
        })?;
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|err| {
            Call {
                verb: "list",
                resource: "pods",
                namespace,
                doing: format!("listing the pods of {kind} {namespace}/{name}"),
            }
            .error(err, url)
        })?;
    let mut candidates: Vec<Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && phase(p) == "Running")
        .cloned()
        .collect();
    candidates.sort_by_key(|p| (!is_ready(p), p.metadata.name.clone()));
    candidates
        .into_iter()
        .next()
        .ok_or_else(|| KubeError::NoRunningPod {
            kind,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            seen: if list.items.is_empty() {
                "no pods".to_owned()
            } else {
                list.items
                    .iter()
                    .map(|p| {
                        let state = if p.metadata.deletion_timestamp.is_some() {
                            "Terminating"
                        } else {
                            phase(p)
                        };
                        format!("{} {state}", p.metadata.name.as_deref().unwrap_or("?"))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Unknown")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A label selector as the `labelSelector` query parameter writes it.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default().join(",");
        parts.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            // An operator this version does not know: select nothing rather than everything.
            other => format!("{} {other} ({values})", expr.key),
        });
    }
    parts.join(",")
}

/// The target container of a running `pod`: `wanted`, or the only container that is not a
/// known sidecar.
pub fn target_in(pod: &Pod, namespace: &str, wanted: Option<&str>) -> Result<TargetPod, KubeError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let what = format!("pod {namespace}/{name}");
    let phase = phase(pod);
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(KubeError::NotRunning {
            what,
            state: "it is terminating".to_owned(),
        });
    }
    if phase != "Running" {
        return Err(KubeError::NotRunning {
            what,
            state: format!("phase {phase}"),
        });
    }
    let containers: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    let container = match wanted {
        Some(wanted) if containers.contains(&wanted) => wanted.to_owned(),
        Some(wanted) => {
            return Err(KubeError::ContainerNotFound {
                pod: name,
                namespace: namespace.to_owned(),
                container: wanted.to_owned(),
                available: containers.join(", "),
            })
        }
        None => {
            let apps: Vec<&str> = containers
                .iter()
                .copied()
                .filter(|c| !SIDECARS.contains(c))
                .collect();
            match apps.as_slice() {
                [one] => (*one).to_owned(),
                [] if containers.len() == 1 => containers[0].to_owned(),
                _ => {
                    return Err(KubeError::ContainerAmbiguous {
                        pod: name,
                        namespace: namespace.to_owned(),
                        containers: containers.join(", "),
                    })
                }
            }
        }
    };
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container));
    let what = format!("container {container} of pod {namespace}/{name}");
    let Some(status) = status else {
        return Err(KubeError::NotRunning {
            what,
            state: "no status reported yet".to_owned(),
        });
    };
    let state = status.state.as_ref();
    if state.is_none_or(|s| s.running.is_none()) {
        let described = match state {
            Some(s) if s.waiting.is_some() => format!(
                "waiting: {}",
                s.waiting
                    .as_ref()
                    .and_then(|w| w.reason.clone())
                    .unwrap_or_default()
            ),
            Some(s) if s.terminated.is_some() => format!(
                "terminated: {}",
                s.terminated
                    .as_ref()
                    .and_then(|t| t.reason.clone())
                    .unwrap_or_default()
            ),
            _ => "state unknown".to_owned(),
        };
        return Err(KubeError::NotRunning {
            what,
            state: described,
        });
    }
    let container_id = status
        .container_id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| KubeError::NotRunning {
            what,
            state: "running but no container id reported yet".to_owned(),
        })?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    Ok(TargetPod {
        namespace: namespace.to_owned(),
        name,
        node,
        container,
        container_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn running(containers: &[&str]) -> Pod {
        let specs: Vec<_> = containers
            .iter()
            .map(|c| serde_json::json!({"name": c, "image": "x"}))
            .collect();
        let statuses: Vec<_> = containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                    "containerID": format!("containerd://{c}0123456789abcdef"),
                    "state": {"running": {}}
                })
            })
            .collect();
        pod(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"containers": specs, "nodeName": "node-a"},
            "status": {"phase": "Running", "containerStatuses": statuses}
        }))
    }

    #[test]
    fn picks_the_only_app_container_beside_sidecars() {
        let t = target_in(&running(&["istio-proxy", "app"]), "shop", None).unwrap();
        assert_eq!(
            t,
            TargetPod {
                namespace: "shop".into(),
                name: "web-1".into(),
                node: "node-a".into(),
                container: "app".into(),
                container_id: "containerd://app0123456789abcdef".into(),
            }
        );
        let t = target_in(&running(&["istio-proxy"]), "shop", None).unwrap();
        assert_eq!(t.container, "istio-proxy");
    }

    #[test]
    fn several_app_containers_are_ambiguous() {
        let err =
            target_in(&running(&["app", "worker", "linkerd-proxy"]), "shop", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod shop/web-1 has several containers (app, worker, linkerd-proxy); choose one with pod/web-1/container/NAME"
        );
        let t = target_in(&running(&["app", "worker"]), "shop", Some("worker")).unwrap();
        assert_eq!(t.container, "worker");
        let err = target_in(&running(&["app"]), "shop", Some("db")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod shop/web-1 has no container db (its containers: app)"
        );
    }

    #[test]
    fn not_running_says_why() {
        let mut p = running(&["app"]);
        p.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(
            target_in(&p, "shop", None).unwrap_err().to_string(),
            "pod shop/web-1 is not running (phase Pending)"
        );
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}
            }]}
        }));
        assert_eq!(
            target_in(&p, "shop", None).unwrap_err().to_string(),
            "container app of pod shop/web-1 is not running (waiting: CrashLoopBackOff)"
        );
        let mut p = running(&["app"]);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(target_in(&p, "shop", None)
            .unwrap_err()
            .to_string()
            .ends_with("(it is terminating)"));
    }

    #[test]
    fn selectors() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web", "tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["x"]},
                {"key": "team", "operator": "Exists"}
            ]
        }))
        .unwrap();
        assert_eq!(
            selector_string(&s),
            "app=web,tier=front,env in (prod,staging),!canary,zone notin (x),team"
        );
        assert_eq!(selector_string(&LabelSelector::default()), "");
    }
}
