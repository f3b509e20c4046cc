//! TLS to an agent at a `tcp:` address (`agent.tls`): the agent's certificate is trusted
//! because a CA of the config signed it for the agent's name, or because it is exactly the
//! certificate the config pins. TLS 1.3 only; the session token is still proven inside, so
//! TLS adds privacy and integrity, and the certificate check stops a machine in the middle.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sctrace_filter::config::{AgentTls, AgentTrust};
use thiserror::Error;
use tokio_rustls::TlsConnector;

/// Why the TLS settings of `agent.tls` cannot be used.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// A certificate file could not be read as PEM.
    #[error("agent.tls: cannot read PEM certificates from {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("agent.tls: {0} holds no PEM certificate")]
    Empty(PathBuf),
    /// A CA certificate is not usable as a trust anchor.
    #[error("agent.tls: the CA certificate in {path} is not usable")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The name to check the certificate against is not a DNS name or IP address.
    #[error("agent.tls: {0:?} is not a host name or IP address to check the agent's certificate against")]
    ServerName(String),
    /// rustls refused the settings.
    #[error("agent.tls: cannot set up TLS")]
    Config(#[source] rustls::Error),
}

/// The connector for `tls`, and the name the agent's certificate is checked against
/// (`server_name`, else `host`).
pub fn connector(
    tls: &AgentTls,
    host: &str,
) -> Result<(TlsConnector, ServerName<'static>), TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsSetupError::Config)?;
    let config = match &tls.trust {
        AgentTrust::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|source| TlsSetupError::Ca {
                    path: path.clone(),
                    source,
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        AgentTrust::Pinned(path) => {
            let pinned = read_certificates(path)?
                .into_iter()
                .next()
                .ok_or_else(|| TlsSetupError::Empty(path.clone()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider }))
                .with_no_client_auth()
        }
    };
    let name = tls.server_name.as_deref().unwrap_or(host);
    let name = ServerName::try_from(name.to_owned())
        .map_err(|_| TlsSetupError::ServerName(name.to_owned()))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty(path.to_owned()));
    }
    Ok(certs)
}

/// Trusts exactly one certificate: the agent must present it as its own (the chain it
/// sends besides, its name and its dates do not matter), and prove it holds its key by
/// signing the handshake, which is checked as usual.
struct Pinned {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pinned(<certificate>)")
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
