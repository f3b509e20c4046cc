//! The Kubernetes client, configured as kubectl would be: `kubeconfig` (or `KUBECONFIG`,
//! then `~/.kube/config`, then the in-cluster service account), `kube_context`, and
//! `accept_invalid_certificates`; then one cheap call (`/version`) to tell an unreachable
//! cluster from later failures.

use kube::config::{KubeConfigOptions, Kubeconfig};
use sctrace_filter::config::Config;

use super::error::{Call, KubeError};

/// A working client and what sctrace says about the cluster.
pub struct ClusterInfo {
    /// The client.
    pub client: kube::Client,
    /// The API server's URL.
    pub url: String,
    /// Its version, e.g. `v1.33.1`.
    pub version: String,
    /// The kubeconfig context's namespace (`default` when it names none).
    pub default_namespace: String,
}

/// Loads the configuration, builds the client and checks that the API server answers.
pub async fn connect(config: &Config) -> Result<ClusterInfo, KubeError> {
    let options = KubeConfigOptions {
        context: config.kube_context.clone(),
        cluster: None,
        user: None,
    };
    let (loaded, origin) = match &config.kubeconfig {
        Some(path) => {
            let origin = format!("kubeconfig {path}");
            let file = Kubeconfig::read_from(path).map_err(|e| KubeError::Config {
                origin: origin.clone(),
                source: e.into(),
            })?;
            let loaded = kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| KubeError::Config {
                    origin: origin.clone(),
                    source: e.into(),
                });
            (loaded, origin)
        }
        None if config.kube_context.is_some() => {
            let origin = "KUBECONFIG or ~/.kube/config".to_owned();
            let loaded =
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| KubeError::Config {
                        origin: origin.clone(),
                        source: e.into(),
                    });
            (loaded, origin)
        }
        None => {
            let origin = "KUBECONFIG, ~/.kube/config or the in-cluster service account".to_owned();
            let loaded = kube::Config::infer().await.map_err(|e| KubeError::Config {
                origin: origin.clone(),
                source: e.into(),
            });
            (loaded, origin)
        }
    };
    let mut kube_config = loaded?;
    tracing::debug!(%origin, url = %kube_config.cluster_url, "kubernetes configuration");
    if let Some(accept) = config.accept_invalid_certificates {
        kube_config.accept_invalid_certs = accept;
    }
    let url = kube_config.cluster_url.to_string();
    let default_namespace = kube_config.default_namespace.clone();
    let client = kube::Client::try_from(kube_config).map_err(|source| KubeError::Client {
        url: url.clone(),
        source,
    })?;
    reach(client, url, default_namespace).await
}

async fn reach(
    client: kube::Client,
    url: String,
    default_namespace: String,
) -> Result<ClusterInfo, KubeError> {
    let version = client.apiserver_version().await.map_err(|err| match err {
        // Anything but an API answer means the server was not reached.
        kube::Error::Api(_) => Call {
            verb: "get",
            resource: "the /version endpoint",
            namespace: "(cluster)",
            doing: "asking the API server for its version".to_owned(),
        }
        .error(err, &url),
        source => KubeError::Unreachable {
            url: url.clone(),
            source,
        },
    })?;
    Ok(ClusterInfo {
        client,
        url,
        version: version.git_version,
        default_namespace,
    })
}
