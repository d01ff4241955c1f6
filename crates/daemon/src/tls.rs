//! TLS for the agent–receiver connection: rustls with the ring provider,
//! certificates and keys in PEM files. The receiver always presents a
//! certificate; it may also require one from each agent, signed by a CA it
//! names. docs/tls.md shows the setup; scripts/make-test-ca.sh makes a CA
//! and certificates for trying it.

use anyhow::{Context, bail};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A byte stream, plain or encrypted.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to or from a peer, TLS or not.
pub type Stream = Box<dyn Io>;

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| {
        format!(
            "cannot read a private key from {} (expected a PEM key, e.g. -----BEGIN PRIVATE KEY-----)",
            path.display()
        )
    })
}

fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).with_context(|| {
            format!(
                "{} holds a certificate rustls cannot use as a CA",
                ca.display()
            )
        })?;
    }
    Ok(roots)
}

/// The agent's side: checks the receiver's certificate against `ca`.
#[derive(Clone)]
pub struct Client {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl Client {
    /// `identity`: this host's certificate chain and key, for receivers that
    /// require one. `server_name`: the name the receiver's certificate must
    /// carry (default: the host part of the address connected to).
    pub fn new(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> anyhow::Result<Client> {
        let builder = ClientConfig::builder().with_root_certificates(roots(ca)?);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .with_context(|| {
                    format!(
                        "{} and {} do not make a usable identity",
                        cert.display(),
                        key.display()
                    )
                })?,
        };
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Run the TLS handshake over `tcp`, connected to `address` (host:port).
    pub async fn connect(&self, tcp: TcpStream, address: &str) -> anyhow::Result<Stream> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_part(address).to_owned(),
        };
        let name = ServerName::try_from(name.clone()).with_context(|| {
            format!("{name:?} is not a valid TLS server name: set [tls] server_name")
        })?;
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .context("TLS handshake with the receiver failed")?;
        Ok(Box::new(stream))
    }
}

/// `host` of `host:port`, without the brackets of an IPv6 literal.
fn host_part(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The receiver's side: presents `cert`; with `client_ca`, requires every
/// agent to present a certificate signed by it.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<TlsAcceptor> {
    let builder = match client_ca {
        None => ServerConfig::builder().with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots(ca)?))
                .build()
                .with_context(|| format!("cannot verify clients with {}", ca.display()))?;
            ServerConfig::builder().with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable identity",
                cert.display(),
                key.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_of_addresses() {
        assert_eq!(host_part("127.0.0.1:7531"), "127.0.0.1");
        assert_eq!(host_part("receiver.example:7531"), "receiver.example");
        assert_eq!(host_part("[::1]:7531"), "::1");
    }

    #[test]
    fn files_that_are_not_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("ca.pem");
        std::fs::write(&bogus, "not a certificate\n").unwrap();
        let err = Client::new(&bogus, None, None).err().unwrap();
        assert!(
            format!("{err:#}").contains("ca.pem holds no certificate"),
            "{err:#}"
        );
        let err = acceptor(&dir.path().join("missing.pem"), &bogus, None)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
    }
}
