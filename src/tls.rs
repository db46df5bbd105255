//! TLS for Sluice's listeners (`[http.tls]`, `[tcp.tls]`): the server certificate and,
//! with `client_ca`, the authority a client certificate must be signed by, loaded with
//! rustls (no OpenSSL) and swapped on SIGHUP, so that renewals need no restart.
//!
//! In: PEM files (certificate chain, private key, client CA). Out: the acceptor for the
//! next connection; connections already open keep what they started with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use serde::Deserialize;

/// `[http.tls]`: PEM files of the server certificate (with its chain) and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain: the server certificate, then its intermediates.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates of the authority that signs client certificates: with it, a
    /// client must present a certificate it signed, or is refused before anything is
    /// read.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The TLS acceptor in force and where it was loaded from.
pub struct Tls {
    config: TlsConfig,
    /// The section it comes from (`[http.tls]`), for messages.
    section: &'static str,
    /// The application protocols offered (`http/1.1` for HTTPS, none for TCP lines).
    alpn: Vec<Vec<u8>>,
    acceptor: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("section", &self.section)
            .field("cert", &self.config.cert)
            .field("client_ca", &self.config.client_ca)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate, key and client CA of `section`; errors name the section,
    /// the file and what is wrong with it.
    pub fn load(config: &TlsConfig, section: &'static str, alpn: &[&[u8]]) -> anyhow::Result<Tls> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = acceptor(config, section, &alpn)?;
        Ok(Tls {
            config: config.clone(),
            section,
            alpn,
            acceptor: RwLock::new(acceptor),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a client certificate is required.
    pub fn requires_client_certificate(&self) -> bool {
        self.config.client_ca.is_some()
    }

    /// Re-reads the files (SIGHUP). On an error what is in force stays.
    pub fn reload(&self) {
        match acceptor(&self.config, self.section, &self.alpn) {
            Ok(a) => {
                *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = a;
                tracing::info!(section = self.section, cert = %self.config.cert.display(), "SIGHUP: TLS certificate reloaded.");
            }
            Err(e) => tracing::error!(
                section = self.section,
                error = %format!("{e:#}"),
                "SIGHUP: the TLS certificate could not be reloaded; the previous one stays in use."
            ),
        }
    }
}

fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{what} = {}: cannot read it", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} = {}: not PEM certificates", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} = {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        path.display()
    );
    Ok(certs)
}

fn acceptor(config: &TlsConfig, section: &str, alpn: &[Vec<u8>]) -> anyhow::Result<TlsAcceptor> {
    let chain = certificates(&config.cert, &format!("{section} cert"))?;
    let key = PrivateKeyDer::from_pem_file(&config.key).with_context(|| {
        format!(
            "{section} key = {}: not a readable PEM private key (PKCS#8, PKCS#1 or SEC1)",
            config.key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let what = format!("{section} client_ca");
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, &what)? {
                roots.add(cert).with_context(|| {
                    format!("{what} = {}: not a usable CA certificate", ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("{what} = {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key).with_context(|| {
        format!("{section}: the key does not match the certificate, or is of an unsupported type")
    })?;
    server.alpn_protocols = alpn.to_vec();
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The subject of a client's certificate (`CN=shipper-1,O=Ops`), for the `source` of
/// what it sends; `None` without one, or if it cannot be read.
pub fn peer_subject(conn: &tokio_rustls::rustls::ServerConnection) -> Option<String> {
    use x509_cert::der::Decode;
    let der = conn.peer_certificates()?.first()?;
    let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    Some(cert.tbs_certificate.subject.to_string())
}
