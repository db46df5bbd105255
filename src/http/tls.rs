//! HTTPS: the server certificate of `[http.tls]`, loaded with rustls (no OpenSSL) and
//! swapped on SIGHUP, so cert-manager or Let's Encrypt renewals need no restart.
//!
//! In: PEM files (certificate chain, private key). Out: the acceptor for the next
//! connection; connections already open keep the certificate they started with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The TLS acceptor in force and where it was loaded from.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate and key; errors name the file and what is wrong with it.
    pub fn load(config: &TlsConfig) -> anyhow::Result<Tls> {
        let acceptor = acceptor(&config.cert, &config.key)?;
        Ok(Tls {
            cert: config.cert.clone(),
            key: config.key.clone(),
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

    /// Re-reads the files (SIGHUP). On an error the certificate in force stays.
    pub fn reload(&self) {
        match acceptor(&self.cert, &self.key) {
            Ok(a) => {
                *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = a;
                tracing::info!(cert = %self.cert.display(), "SIGHUP: TLS certificate reloaded.");
            }
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "SIGHUP: the TLS certificate could not be reloaded; the previous one stays in use."
            ),
        }
    }
}

fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("[http.tls] cert = {}: cannot read it", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "[http.tls] cert = {}: not a PEM certificate chain",
                cert.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "[http.tls] cert = {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "[http.tls] key = {}: not a readable PEM private key (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context(
            "[http.tls]: the key does not match the certificate, or is of an unsupported type",
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
