//! Kubernetes targets against a mock API server speaking the API's JSON over HTTP/1.1 on
//! loopback: pod and workload lookup, the ephemeral container patch and the Job, waiting
//! for the agent, the port-forward WebSocket (v4.channel.k8s.io) carrying a real protocol
//! session to an in-process agent, and every failure sctrace must explain.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sctrace::agent_link::kube::{open_with, KubeError, KubeLink, Timing};
use sctrace::progress::{Progress, Style};
use sctrace_filter::config::Target;
use sctrace_filter::Config;
use sctrace_protocol::{Config as ProtocolConfig, Request as PeerRequest, Session, Token};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const NS: &str = "shop";
const APP_ID: &str =
    "containerd://aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";

/// How the agent's container behaves once created.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AgentBehaviour {
    /// Waiting (ContainerCreating) for this many looks, then running.
    RunsAfter(usize),
    /// The image cannot be pulled.
    ImagePull,
    /// Stays waiting forever; the pod has events.
    NeverRuns,
}

/// What a port-forward request gets.
#[derive(Clone, PartialEq, Eq, Debug)]
enum ForwardBehaviour {
    /// A working forward to the in-process agent.
    Agent,
    /// An upgrade whose error channel says this, then the close.
    Error(String),
    /// A forward to an agent that holds another token.
    Impostor,
}

struct MockState {
    pods: BTreeMap<String, Value>,
    deployments: BTreeMap<String, Value>,
    events: Vec<Value>,
    /// (method, path prefix) answered with 403.
    forbidden: Vec<(String, String)>,
    agent: AgentBehaviour,
    forward: ForwardBehaviour,
    /// Every request: method, path and query, body.
    log: Vec<(String, String, Value)>,
    /// The agent's token, as written to its standard input through the attach.
    token: Option<String>,
    /// The containers attached to, with the query of each attach.
    attached: Vec<String>,
    /// The agent's port, from the spec sctrace sent.
    port: Option<u16>,
    looks: usize,
    /// The environment the in-process agent gives.
    env: Vec<(&'static str, &'static str)>,
    /// Drop the forward after this many bytes from the client (tests of a dropped forward).
    drop_forward: Option<tokio::sync::oneshot::Sender<()>>,
}

type Shared = Arc<Mutex<MockState>>;

struct Mock {
    state: Shared,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn running_pod(name: &str, labels: Value, containers: &[(&str, &str)], node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": containers.iter().map(|(c, _)| json!({"name": c, "image": "app:1"})).collect::<Vec<_>>()
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": containers.iter().map(|(c, id)| json!({
                "name": c, "image": "app:1", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": id, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            })).collect::<Vec<_>>()
        }
    })
}

impl Mock {
    async fn start() -> Mock {
        let mut pods = BTreeMap::new();
        pods.insert(
            "web".to_owned(),
            running_pod(
                "web",
                json!({"app": "web"}),
                &[
                    ("app", APP_ID),
                    ("istio-proxy", "containerd://0000000000000000"),
                ],
                "node-a",
            ),
        );
        let state = Arc::new(Mutex::new(MockState {
            pods,
            deployments: BTreeMap::new(),
            events: Vec::new(),
            forbidden: Vec::new(),
            agent: AgentBehaviour::RunsAfter(2),
            forward: ForwardBehaviour::Agent,
            log: Vec::new(),
            token: None,
            attached: Vec::new(),
            port: None,
            looks: 0,
            env: vec![
                ("DATABASE_URL", "postgres://db:5432/shop"),
                ("PATH", "/app/bin"),
            ],
            drop_forward: None,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        let dir = std::env::temp_dir().join(format!(
            "sctrace-kube-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("config");
        std::fs::write(&kubeconfig, kubeconfig_text(addr)).unwrap();
        Mock {
            state,
            kubeconfig,
            _dir: TempDir(dir),
        }
    }

    fn config(&self, target: &str) -> Config {
        let mut config = Config::default();
        config.kubeconfig = Some(self.kubeconfig.display().to_string());
        config.target.path = Some(target.parse::<Target>().unwrap());
        config.agent.startup_timeout = 3;
        config
    }

    fn set(&self, f: impl FnOnce(&mut MockState)) {
        f(&mut self.state.lock().unwrap());
    }

    fn log(&self) -> Vec<(String, String, Value)> {
        self.state.lock().unwrap().log.clone()
    }

    fn request(&self, method: &str, path_prefix: &str) -> Option<(String, Value)> {
        self.log()
            .into_iter()
            .find(|(m, p, _)| m == method && p.starts_with(path_prefix))
            .map(|(_, p, body)| (p, body))
    }
}

fn kubeconfig_text(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: http://{addr}\n- name: nowhere\n  cluster:\n    server: http://127.0.0.1:1\nusers:\n- name: dev\n  user:\n    token: dev-token\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: dev\n    namespace: {NS}\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: dev\ncurrent-context: mock\n"
    )
}

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    respond(StatusCode::from_u16(code).unwrap(), body)
}

fn respond(code: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn list(kind: &str, items: Vec<Value>) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..(i + 3).min(s.len())], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

/// Whether `labels` satisfy a `k=v,k2=v2` selector.
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels.get(k).and_then(Value::as_str) == Some(v),
        None => false,
    })
}

fn agent_container_state(state: &mut MockState) -> Value {
    state.looks += 1;
    match state.agent {
        AgentBehaviour::RunsAfter(n) if state.looks > n => {
            json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
        }
        AgentBehaviour::ImagePull if state.looks > 1 => json!({"waiting": {
            "reason": "ErrImagePull",
            "message": "failed to pull image \"ghcr.io/sctrace/sctrace-agent:0.1.0\": not found"
        }}),
        _ => json!({"waiting": {"reason": "ContainerCreating"}}),
    }
}

fn agent_status(name: &str, state: Value) -> Value {
    json!({"name": name, "image": "agent", "imageID": "", "ready": false, "restartCount": 0, "state": state})
}

/// Takes the port out of the agent container sctrace sent.
fn remember_agent(state: &mut MockState, container: &Value) {
    state.port = container["command"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find_map(|a| a.as_str()?.strip_prefix("tcp:127.0.0.1:"))
        })
        .and_then(|p| p.parse().ok());
}

async fn handle(
    state: Shared,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let full = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let q = query(&req);
    let upgrade = req.headers().contains_key("upgrade");
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut st = state.lock().unwrap();
    st.log.push((method.clone(), full, body.clone()));
    if let Some((_, prefix)) = st
        .forbidden
        .iter()
        .find(|(m, p)| *m == method && path.starts_with(p.as_str()))
    {
        let message = format!("forbidden by the mock RBAC for {method} {prefix}");
        return Ok(status(403, "Forbidden", &message));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match (method.as_str(), parts.as_slice()) {
        ("GET", ["version"]) => respond(
            StatusCode::OK,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
        ),
        ("GET", ["api", "v1", "namespaces", NS, "pods"]) => {
            let selector = q.get("labelSelector").cloned().unwrap_or_default();
            let items = st
                .pods
                .values()
                .filter(|p| selects(&selector, &p["metadata"]["labels"]))
                .cloned()
                .collect::<Vec<_>>();
            let items = items
                .into_iter()
                .map(|mut p| {
                    if p["metadata"]["labels"]["sctrace.dev/agent"].is_string() {
                        let s = agent_container_state(&mut st);
                        p["status"]["containerStatuses"] =
                            json!([agent_status("sctrace-agent", s)]);
                    }
                    p
                })
                .collect();
            list("PodList", items)
        }
        ("GET", ["api", "v1", "namespaces", NS, "pods", name]) => match st.pods.get(*name).cloned()
        {
            Some(mut pod) => {
                if let Some(agent) = pod["spec"]["ephemeralContainers"][0]["name"]
                    .as_str()
                    .map(str::to_owned)
                {
                    let s = agent_container_state(&mut st);
                    pod["status"]["ephemeralContainerStatuses"] = json!([agent_status(&agent, s)]);
                }
                respond(StatusCode::OK, pod)
            }
            None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
        },
        ("PATCH", ["api", "v1", "namespaces", NS, "pods", name, "ephemeralcontainers"]) => {
            let container = body["spec"]["ephemeralContainers"][0].clone();
            remember_agent(&mut st, &container);
            match st.pods.get_mut(*name) {
                Some(pod) => {
                    pod["spec"]["ephemeralContainers"] = json!([container]);
                    respond(StatusCode::OK, pod.clone())
                }
                None => status(404, "NotFound", "no pod"),
            }
        }
        ("GET", ["apis", "apps", "v1", "namespaces", NS, "deployments", name]) => {
            match st.deployments.get(*name) {
                Some(d) => respond(StatusCode::OK, d.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("deployments.apps \"{name}\" not found"),
                ),
            }
        }
        ("POST", ["apis", "batch", "v1", "namespaces", ns, "jobs"]) => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or("job")
                .to_owned();
            let template = body["spec"]["template"].clone();
            remember_agent(&mut st, &template["spec"]["containers"][0]);
            let pod_name = format!("{name}-mock1");
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"]},
                "spec": template["spec"],
                "status": {"phase": "Pending"}
            });
            st.pods.insert(pod_name, pod);
            respond(StatusCode::CREATED, body.clone())
        }
        ("DELETE", ["apis", "batch", "v1", "namespaces", _, "jobs", _]) => respond(
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
        ),
        ("GET", ["api", "v1", "namespaces", NS, "events"]) => {
            let selector = q.get("fieldSelector").cloned().unwrap_or_default();
            let name = selector.strip_prefix("involvedObject.name=").unwrap_or("");
            let items = st
                .events
                .iter()
                .filter(|e| e["involvedObject"]["name"] == name)
                .cloned()
                .collect();
            list("EventList", items)
        }
        ("GET", ["api", "v1", "namespaces", NS, "pods", name, "attach"]) if upgrade => {
            if !st.pods.contains_key(*name) {
                return Ok(status(404, "NotFound", "no pod"));
            }
            let (Some(key), Some(on_upgrade)) = (key, on_upgrade) else {
                return Ok(status(400, "BadRequest", "no websocket key"));
            };
            let query = req_query_string(&q);
            st.attached.push(query);
            let shared = state.clone();
            tokio::spawn(async move {
                if let Some(ws) = websocket(on_upgrade).await {
                    serve_attach(ws, shared).await;
                }
            });
            switching_protocols(&key)
        }
        ("GET", ["api", "v1", "namespaces", NS, "pods", name, "portforward"]) if upgrade => {
            let port: u16 = q.get("ports").and_then(|p| p.parse().ok()).unwrap_or(0);
            if !st.pods.contains_key(*name) {
                return Ok(status(404, "NotFound", "no pod"));
            }
            let (Some(key), Some(on_upgrade)) = (key, on_upgrade) else {
                return Ok(status(400, "BadRequest", "no websocket key"));
            };
            let behaviour = st.forward.clone();
            let agent = (st.token.clone(), st.port, st.env.clone());
            let drop_rx = {
                let (tx, rx) = tokio::sync::oneshot::channel();
                st.drop_forward = Some(tx);
                rx
            };
            tokio::spawn(async move {
                if let Some(ws) = websocket(on_upgrade).await {
                    serve_forward(ws, port, behaviour, agent, drop_rx).await;
                }
            });
            switching_protocols(&key)
        }
        _ => status(404, "NotFound", &format!("the mock has no {method} {path}")),
    };
    Ok(response)
}

/// The server side of an upgraded WebSocket connection.
async fn websocket(
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    let upgraded = on_upgrade.await.ok()?;
    Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await)
}

fn switching_protocols(key: &[u8]) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key))
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The query of a request as `k=v` pairs in name order, for assertions.
fn req_query_string(q: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join("&")
}

/// The server side of a v4.channel.k8s.io attach: the first line written on the standard
/// input channel (0) is the agent's token.
async fn serve_attach(ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, state: Shared) {
    let (_tx, mut rx) = ws.split();
    let mut line = Vec::new();
    while let Some(Ok(message)) = rx.next().await {
        match message {
            Message::Binary(data) if data.first() == Some(&0) => {
                line.extend_from_slice(&data[1..]);
                if let Some(end) = line.iter().position(|b| *b == b'\n') {
                    let token = String::from_utf8_lossy(&line[..end]).into_owned();
                    state.lock().unwrap().token = Some(token);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

/// The server side of a v4.channel.k8s.io port-forward: announce the data (0) and error (1)
/// channels with the port, then carry bytes between channel 0 and an in-process agent.
async fn serve_forward(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    port: u16,
    behaviour: ForwardBehaviour,
    (token, agent_port, env): (
        Option<String>,
        Option<u16>,
        Vec<(&'static str, &'static str)>,
    ),
    drop_rx: tokio::sync::oneshot::Receiver<()>,
) {
    let (mut tx, mut rx) = ws.split();
    let p = port.to_le_bytes();
    let _ = tx.send(Message::binary(vec![0, p[0], p[1]])).await;
    let _ = tx.send(Message::binary(vec![1, p[0], p[1]])).await;
    let refused = match &behaviour {
        ForwardBehaviour::Error(message) => Some(message.clone()),
        ForwardBehaviour::Agent | ForwardBehaviour::Impostor if Some(port) != agent_port => Some(format!(
            "error forwarding port {port}: nothing listens there (the agent listens on {agent_port:?})"
        )),
        ForwardBehaviour::Agent | ForwardBehaviour::Impostor => None,
    };
    if let Some(message) = refused {
        let mut frame = vec![1];
        frame.extend_from_slice(message.as_bytes());
        let _ = tx.send(Message::binary(frame)).await;
        let _ = tx.send(Message::Close(None)).await;
        return;
    }
    let Some(token) = token else { return };
    let token = if behaviour == ForwardBehaviour::Impostor {
        "an-impostor's-token".to_owned()
    } else {
        token
    };
    let (mut near, far) = tokio::io::duplex(1 << 20);
    tokio::spawn(run_agent(far, token, env));
    let mut buf = vec![0u8; 64 * 1024];
    let mut drop_rx = drop_rx;
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(data))) if data.len() > 1 && data[0] == 0 => {
                    match near.write_all(&data[1..]).await {
                        Ok(()) => {}
                        Err(_) => break,
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            },
            n = near.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(0);
                    frame.extend_from_slice(&buf[..n]);
                    if tx.send(Message::binary(frame)).await.is_err() { break; }
                }
            },
            _ = &mut drop_rx => {
                let _ = tx.send(Message::binary(b"\x01lost connection to pod".to_vec())).await;
                let _ = tx.send(Message::Close(None)).await;
                break;
            }
        }
    }
}

/// A tiny agent: checks the token and answers environment requests.
async fn run_agent(
    io: tokio::io::DuplexStream,
    token: String,
    env: Vec<(&'static str, &'static str)>,
) {
    let Ok(token) = Token::new(token.into_bytes()) else {
        return;
    };
    let Ok(session) = Session::server(io, &token, ProtocolConfig::default()).await else {
        return;
    };
    let Session {
        handle,
        mut requests,
        task,
    } = session;
    tokio::spawn(task.run());
    while let Some(request) = requests.next().await {
        if let PeerRequest::Env(r) = request {
            let vars = env
                .iter()
                .map(|(n, v)| {
                    (
                        Bytes::from_static(n.as_bytes()),
                        Bytes::from_static(v.as_bytes()),
                    )
                })
                .collect();
            let _ = r.answer(vars);
        }
    }
    drop(handle);
}

fn fast() -> Timing {
    Timing {
        poll: Duration::from_millis(20),
    }
}

async fn open(config: &Config) -> Result<KubeLink, KubeError> {
    open_with(config, &Progress::quiet(), &fast()).await
}

async fn env_through(link: KubeLink) -> Vec<(String, String)> {
    let link = sctrace::agent_link::serve_link(link);
    let vars = link.handle.target_env().await.unwrap();
    vars.iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn ephemeral_agent_happy_path() {
    let mock = Mock::start().await;
    let mut config = mock.config("pod/web");
    config.agent.ephemeral = true;
    let link = open(&config).await.unwrap();
    assert!(
        link.address.starts_with("pod shop/web port "),
        "{}",
        link.address
    );
    let env = env_through(link).await;
    assert_eq!(
        env,
        [
            (
                "DATABASE_URL".to_owned(),
                "postgres://db:5432/shop".to_owned()
            ),
            ("PATH".to_owned(), "/app/bin".to_owned())
        ]
    );
    // The patch carried the container sctrace built: its token, target and port.
    let (path, body) = mock
        .request(
            "PATCH",
            "/api/v1/namespaces/shop/pods/web/ephemeralcontainers",
        )
        .unwrap();
    assert!(path.contains("/ephemeralcontainers"), "{path}");
    let container = &body["spec"]["ephemeralContainers"][0];
    assert_eq!(
        container["targetContainerName"], "app",
        "the sidecar is skipped"
    );
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&command[command.len() - 2..], ["--container-id", APP_ID]);
    assert!(command.contains(&"--once"));
    // The token is not in the spec: the agent reads it from its standard input, written
    // through the attach.
    assert!(command.contains(&"--token-stdin"));
    assert_eq!(container.get("env"), None);
    assert_eq!(container["stdin"], true);
    assert_eq!(container["stdinOnce"], true);
    let (token, attached) = {
        let st = mock.state.lock().unwrap();
        (st.token.clone().unwrap(), st.attached.clone())
    };
    assert_eq!(token.len(), 64, "a fresh 32-byte token");
    let name = container["name"].as_str().unwrap();
    assert_eq!(attached, [format!("container={name}&stdin=true")]);
    let port = mock.state.lock().unwrap().port.unwrap();
    let (forward, _) = mock
        .request("GET", "/api/v1/namespaces/shop/pods/web/portforward")
        .unwrap();
    assert!(forward.ends_with(&format!("ports={port}")), "{forward}");
    // No Job in this mode.
    assert!(mock.request("POST", "/apis/batch").is_none());
}

#[tokio::test]
async fn job_agent_for_a_deployment_happy_path() {
    let mock = Mock::start().await;
    mock.set(|st| {
        st.deployments.insert(
            "web".into(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": NS},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}}
            }),
        );
        let mut pending = running_pod(
            "web-0",
            json!({"app": "web"}),
            &[("app", "containerd://1111111111111111")],
            "node-x",
        );
        pending["status"]["phase"] = json!("Pending");
        st.pods.insert("web-0".into(), pending);
        st.pods.insert(
            "web-7".into(),
            running_pod(
                "web-7",
                json!({"app": "web"}),
                &[("app", "containerd://7777777777777777")],
                "node-b",
            ),
        );
        // The plain pod "web" has the label too but is not ready: the ready one is chosen.
        st.pods.get_mut("web").unwrap()["status"]["conditions"] = json!([]);
    });
    let config = mock.config("deployment/web/container/app");
    let link = open(&config).await.unwrap();
    let env = env_through(link).await;
    assert_eq!(env.len(), 2);
    let (_, job) = mock
        .request("POST", "/apis/batch/v1/namespaces/shop/jobs")
        .unwrap();
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(
        spec["nodeName"], "node-b",
        "the agent runs on the target's node"
    );
    assert_eq!(spec["hostPID"], true);
    let command = spec["containers"][0]["command"].as_array().unwrap();
    assert_eq!(command[command.len() - 1], "containerd://7777777777777777");
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 1);
    let (list, _) = mock
        .request("GET", "/api/v1/namespaces/shop/pods?")
        .unwrap();
    assert!(list.contains("labelSelector=app%3Dweb"), "{list}");
    // The agent pod was found by its label and forwarded to.
    let job_name = job["metadata"]["name"].as_str().unwrap();
    assert!(mock
        .request(
            "GET",
            &format!("/api/v1/namespaces/shop/pods/{job_name}-mock1/portforward")
        )
        .is_some());
    assert!(
        mock.request("DELETE", "/apis/batch").is_none(),
        "a working agent is kept"
    );
}

#[tokio::test]
async fn targetless_agent_is_a_job_with_its_own_network() {
    let mock = Mock::start().await;
    let mut config = mock.config("targetless");
    config.agent.namespace = Some(NS.into());
    let link = open(&config).await.unwrap();
    drop(link);
    let (_, job) = mock
        .request("POST", "/apis/batch/v1/namespaces/shop/jobs")
        .unwrap();
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(spec.get("hostPID"), None);
    let command = spec["containers"][0]["command"].as_array().unwrap();
    assert_eq!(command[command.len() - 2], "--netns");
    assert_eq!(command[command.len() - 1], "/proc/self/ns/net");
    assert!(mock
        .request("GET", "/api/v1/namespaces/shop/pods/web")
        .is_none());
}

#[tokio::test]
async fn missing_pod_names_the_namespace() {
    let mock = Mock::start().await;
    let err = open(&mock.config("pod/nope")).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "pod nope not found in namespace shop; set target.namespace if it lives in another one"
    );
    let mut config = mock.config("deployment/nope");
    config.target.namespace = Some(NS.into());
    let err = open(&config).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "deployment nope not found in namespace shop; set target.namespace if it lives in another one"
    );
}

#[tokio::test]
async fn rbac_refusals_name_the_verb_and_resource() {
    let mock = Mock::start().await;
    mock.set(|st| {
        st.forbidden
            .push(("POST".into(), "/apis/batch/v1/namespaces/shop/jobs".into()))
    });
    let err = open(&mock.config("pod/web")).await.err().unwrap();
    assert!(
        matches!(
            err,
            KubeError::Forbidden {
                verb: "create",
                resource: "jobs",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "forbidden: your Kubernetes user may not create jobs in namespace shop (forbidden by the mock RBAC for POST /apis/batch/v1/namespaces/shop/jobs); docs/kubernetes.md lists the permissions sctrace needs"
    );

    let mock = Mock::start().await;
    mock.set(|st| {
        st.forbidden
            .push(("GET".into(), "/api/v1/namespaces/shop/pods/web".into()))
    });
    let err = open(&mock.config("pod/web")).await.err().unwrap();
    assert!(
        matches!(
            err,
            KubeError::Forbidden {
                verb: "get",
                resource: "pods",
                ..
            }
        ),
        "{err}"
    );

    let err = forbidden_for_an_ephemeral_agent(
        "PATCH",
        "/api/v1/namespaces/shop/pods/web/ephemeralcontainers",
    )
    .await;
    assert!(
        matches!(
            err,
            KubeError::Forbidden {
                verb: "patch",
                resource: "pods/ephemeralcontainers",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn image_pull_failure_is_reported_and_the_job_removed() {
    let mock = Mock::start().await;
    mock.set(|st| st.agent = AgentBehaviour::ImagePull);
    let err = open(&mock.config("pod/web")).await.err().unwrap();
    assert!(matches!(err, KubeError::ImagePull { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("the agent image ghcr.io/sctrace/sctrace-agent:"),
        "{text}"
    );
    assert!(
        text.contains("(ErrImagePull: failed to pull image"),
        "{text}"
    );
    assert!(
        text.ends_with("check agent.image, your registry and agent.image_pull_secrets"),
        "{text}"
    );
    assert!(mock
        .request(
            "DELETE",
            "/apis/batch/v1/namespaces/shop/jobs/sctrace-agent-"
        )
        .is_some());
}

#[tokio::test]
async fn an_agent_that_never_runs_times_out_with_the_pods_events() {
    let mock = Mock::start().await;
    mock.set(|st| {
        st.agent = AgentBehaviour::NeverRuns;
    });
    // The events name the agent's pod, whose name is only known once the Job exists: the
    // mock files them under every pod it creates.
    let state = mock.state.clone();
    let events = tokio::spawn(async move {
        for _ in 0..200 {
            {
                let mut st = state.lock().unwrap();
                let names: Vec<String> = st
                    .pods
                    .keys()
                    .filter(|k| k.ends_with("-mock1"))
                    .cloned()
                    .collect();
                if let Some(name) = names.first() {
                    st.events = vec![
                        json!({"metadata": {"name": "e1"}, "involvedObject": {"name": name}, "type": "Normal", "reason": "Scheduled", "message": "Successfully assigned", "lastTimestamp": "2026-01-01T00:00:00Z"}),
                        json!({"metadata": {"name": "e2"}, "involvedObject": {"name": name}, "type": "Warning", "reason": "FailedMount", "message": "MountVolume.SetUp failed ", "lastTimestamp": "2026-01-01T00:00:05Z"}),
                    ];
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut config = mock.config("pod/web");
    config.agent.startup_timeout = 1;
    let started = std::time::Instant::now();
    let err = open(&config).await.err().unwrap();
    events.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = err.to_string();
    assert!(
        matches!(err, KubeError::AgentNotReady { seconds: 1, .. }),
        "{text}"
    );
    assert!(
        text.ends_with("was not running after 1 s (agent.startup_timeout); events: Normal Scheduled: Successfully assigned; Warning FailedMount: MountVolume.SetUp failed"),
        "{text}"
    );
    assert!(
        text.starts_with("the agent pod shop/sctrace-agent-"),
        "{text}"
    );
    assert!(mock.request("DELETE", "/apis/batch").is_some());
}

#[tokio::test]
async fn port_forward_failures_are_retried_then_reported() {
    let mock = Mock::start().await;
    mock.set(|st| {
        st.forward = ForwardBehaviour::Error(
            "error forwarding port 31000 to pod abc: failed to connect to localhost:31000: connection refused".into(),
        )
    });
    let mut config = mock.config("pod/web");
    config.agent.ephemeral = true;
    config.agent.startup_timeout = 2;
    let err = open(&config).await.err().unwrap();
    let text = err.to_string();
    assert!(matches!(err, KubeError::PortForward { .. }), "{text}");
    assert!(
        text.starts_with("cannot port-forward to the agent (pod shop/web port "),
        "{text}"
    );
    assert!(text.ends_with("connection refused"), "{text}");
    let attempts = mock
        .log()
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/portforward"))
        .count();
    assert!(
        attempts >= 2,
        "retried while the agent may still be starting ({attempts})"
    );

    let err =
        forbidden_for_an_ephemeral_agent("GET", "/api/v1/namespaces/shop/pods/web/portforward")
            .await;
    assert!(
        matches!(
            err,
            KubeError::Forbidden {
                verb: "get/create",
                resource: "pods/portforward",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_dropped_forward_ends_the_session() {
    let mock = Mock::start().await;
    let mut config = mock.config("pod/web");
    config.agent.ephemeral = true;
    let link = sctrace::agent_link::serve_link(open(&config).await.unwrap());
    assert_eq!(link.handle.target_env().await.unwrap().len(), 2);
    let drop_forward = mock.state.lock().unwrap().drop_forward.take().unwrap();
    let _ = drop_forward.send(());
    let reason = tokio::time::timeout(Duration::from_secs(10), link.handle.closed())
        .await
        .expect("the session notices the dropped forward");
    assert!(!reason.to_string().is_empty());
}

#[tokio::test]
async fn unreachable_cluster_and_contexts() {
    let mock = Mock::start().await;
    let mut config = mock.config("pod/web");
    config.kube_context = Some("nowhere".into());
    let err = open(&config).await.err().unwrap();
    assert!(matches!(err, KubeError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("cannot reach the Kubernetes API server at http://127.0.0.1:1/"),
        "{err}"
    );
    config.kube_context = Some("no-such-context".into());
    let err = open(&config).await.err().unwrap();
    assert!(matches!(err, KubeError::Config { .. }), "{err}");
    config.kubeconfig = Some("/nonexistent/kubeconfig".into());
    let err = open(&config).await.err().unwrap();
    assert!(
        err.to_string().starts_with(
            "cannot load the Kubernetes configuration (kubeconfig /nonexistent/kubeconfig): "
        ),
        "{err}"
    );
}

#[tokio::test]
async fn progress_lines_for_each_step() {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mock = Mock::start().await;
    let out = Captured::default();
    let progress = Progress::to_writer(Style::Plain, Box::new(out.clone()));
    let mut config = mock.config("pod/web");
    config.agent.ephemeral = true;
    let _link = open_with(&config, &progress, &fast()).await.unwrap();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with("sctrace: cluster reached (http://127.0.0.1:"),
        "{text}"
    );
    assert!(lines[0].ends_with(", Kubernetes v1.33.0)"), "{text}");
    assert_eq!(
        lines[1],
        "sctrace: target: pod shop/web, container app, node node-a"
    );
    assert!(
        lines[2].starts_with("sctrace: agent created: ephemeral container sctrace-agent-"),
        "{text}"
    );
    assert_eq!(lines[3], "sctrace: agent running in pod shop/web");
    assert_eq!(lines[4], "sctrace: connected to the agent");
}

/// Every request sctrace made to the API server, and every object the mock stores, as text.
fn everything_the_cluster_saw(mock: &Mock) -> String {
    let st = mock.state.lock().unwrap();
    let mut text = String::new();
    for (method, path, body) in &st.log {
        text.push_str(&format!("{method} {path} {body}\n"));
    }
    for pod in st.pods.values() {
        text.push_str(&pod.to_string());
    }
    text
}

#[tokio::test]
async fn the_token_is_in_no_object_of_the_cluster() {
    for ephemeral in [true, false] {
        let mock = Mock::start().await;
        let mut config = mock.config("pod/web");
        config.agent.ephemeral = ephemeral;
        let link = open(&config).await.unwrap();
        assert_eq!(env_through(link).await.len(), 2, "the session works");
        let token = mock.state.lock().unwrap().token.clone().unwrap();
        let seen = everything_the_cluster_saw(&mock);
        assert!(
            seen.contains("sctrace-agent"),
            "the agent was created: {seen}"
        );
        assert!(
            !seen.contains(&token),
            "ephemeral {ephemeral}: the token is readable in the cluster: {seen}"
        );
        assert!(!seen.contains("SCTRACE_AGENT_TOKEN"), "{seen}");
    }
}

#[tokio::test]
async fn an_agent_that_does_not_prove_the_token_gets_no_session() {
    // The pod's port answers with an agent holding another token (say, something else in
    // the pod bound the port first).
    let mock = Mock::start().await;
    mock.set(|st| st.forward = ForwardBehaviour::Impostor);
    let mut config = mock.config("pod/web");
    config.agent.ephemeral = true;
    config.agent.startup_timeout = 2;
    let err = open(&config).await.err().unwrap();
    assert!(
        matches!(
            err,
            KubeError::Handshake {
                source: sctrace_protocol::HandshakeError::AgentNotAuthenticated,
                ..
            }
        ),
        "{err}"
    );
}

/// What opening an ephemeral agent for pod/web says when the mock's RBAC forbids `method`
/// on `path`.
async fn forbidden_for_an_ephemeral_agent(method: &str, path: &str) -> KubeError {
    let mock = Mock::start().await;
    mock.set(|st| st.forbidden.push((method.into(), path.into())));
    let mut config = mock.config("pod/web");
    config.agent.ephemeral = true;
    open(&config).await.err().unwrap()
}

#[tokio::test]
async fn attach_refusals_name_the_verb_and_resource() {
    let err =
        forbidden_for_an_ephemeral_agent("GET", "/api/v1/namespaces/shop/pods/web/attach").await;
    assert!(
        matches!(
            err,
            KubeError::Forbidden {
                verb: "get/create",
                resource: "pods/attach",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn text_from_the_cluster_is_escaped() {
    let mock = Mock::start().await;
    mock.set(|st| st.forward = ForwardBehaviour::Error("refused\x1b]0;owned\x07\x1b[2J".into()));
    let mut config = mock.config("pod/web");
    config.agent.ephemeral = true;
    config.agent.startup_timeout = 2;
    let text = open(&config).await.err().unwrap().to_string();
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(
        text.ends_with("refused\\u{1b}]0;owned\\u{7}\\u{1b}[2J"),
        "{text}"
    );
}
