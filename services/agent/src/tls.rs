//! TLS towards the hub (`governanceDashboard.server.tls`): the hub's
//! certificate is checked against `caCertPath` (or the system's roots), a
//! client certificate is presented for mTLS, and `insecureSkipVerify` accepts
//! any certificate (testing only; the agent says so in its log).
//!
//! The agent builds its rustls configuration itself (tonic's own TLS has no
//! "skip verify") and hands tonic a connector that dials TCP and runs the
//! handshake with ALPN `h2`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where the PEM files are, as configured.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA bundle that signs the hub's certificate; `None`: system roots.
    pub ca_cert: Option<String>,
    /// Client certificate chain and key, for mTLS.
    pub client: Option<(String, String)>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
}

/// A TLS setting that cannot be used, with the key it came from.
#[derive(Debug, thiserror::Error)]
#[error("governanceDashboard.server.tls.{key}: {why}")]
pub struct TlsError {
    key: &'static str,
    why: String,
}

fn fail(key: &'static str, why: impl Into<String>) -> TlsError {
    TlsError {
        key,
        why: why.into(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads the files and builds the client configuration.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("enabled", e.to_string()))?;
    let builder = if files.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    } else {
        let mut roots = RootCertStore::empty();
        match &files.ca_cert {
            Some(path) => {
                let certs = read_certs("caCertPath", path)?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| fail("caCertPath", format!("{path}: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(fail(
                        "caCertPath",
                        "no CA given and the system has no root certificates; set caCertPath",
                    ));
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let chain = read_certs("clientCertPath", cert_path)?;
            let key = std::fs::read(key_path)
                .map_err(|e| fail("clientKeyPath", format!("cannot read {key_path}: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                fail(
                    "clientKeyPath",
                    format!("{key_path}: no PEM private key: {e}"),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                fail(
                    "clientKeyPath",
                    format!("does not fit the certificate: {e}"),
                )
            })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; `key` names the setting that gave it.
fn read_certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| fail(key, format!("cannot read {path}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(key, format!("{path}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail(key, format!("{path}: holds no certificate")));
    }
    Ok(certs)
}

/// A tonic connector: TCP to the URI's host and port, then the handshake
/// against `server_name`.
pub fn connector(
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future + Send,
> + Send
+ 'static {
    let tls = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: tonic::codegen::http::Uri| {
        let (tls, name) = (tls.clone(), server_name.clone());
        async move {
            let host = uri.host().unwrap_or("localhost").trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// `insecureSkipVerify`: any certificate, but signatures are still checked
/// so the handshake itself is sound.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ca: Option<&str>, client: Option<(&str, &str)>) -> TlsFiles {
        TlsFiles {
            ca_cert: ca.map(str::to_owned),
            client: client.map(|(c, k)| (c.to_owned(), k.to_owned())),
            insecure_skip_verify: false,
        }
    }

    fn key_of(f: &TlsFiles) -> String {
        client_config(f).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn unusable_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.to_str().unwrap();
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap();

        let e = key_of(&files(Some(missing), None));
        assert!(
            e.starts_with("governanceDashboard.server.tls.caCertPath:"),
            "{e}"
        );
        assert!(e.contains("cannot read"), "{e}");
        let e = key_of(&files(Some(junk), None));
        assert!(
            e.contains("caCertPath") && e.contains("no certificate"),
            "{e}"
        );

        let mut skip = files(None, Some((missing, junk)));
        skip.insecure_skip_verify = true;
        let e = key_of(&skip);
        assert!(e.contains("clientCertPath"), "{e}");
        skip.client = Some((junk.to_owned(), junk.to_owned()));
        let e = key_of(&skip);
        assert!(e.contains("clientCertPath"), "{e}");
    }

    #[test]
    fn insecure_skip_verify_needs_no_ca() {
        let mut f = files(None, None);
        f.insecure_skip_verify = true;
        let config = client_config(&f).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }
}
