//! Writing the admin kubeconfig `rk3s server` renders with [`rk3s_apiserver::Pki::admin_kubeconfig`]
//! (the admin client certificate, `system:masters`), and the readiness check it waits on first.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Writing the kubeconfig failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the kubeconfig {}: {error}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Writes `contents` to `path` with `mode` (creating the parent directory), replacing the file
/// atomically, so a reader never sees half a file and the mode is right from the start.
pub fn write(path: &Path, contents: &str, mode: u32) -> Result<(), WriteError> {
    let err = |error| WriteError {
        path: path.to_path_buf(),
        error,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits away; the mode asked for is the mode wanted.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Why `/readyz` did not answer `ok`.
#[derive(Debug, thiserror::Error)]
pub enum ReadyzError {
    #[error("bad CA certificate: {0}")]
    Ca(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("answered: {0}")]
    NotReady(String),
}

/// Asks `https://<addr>/readyz` once, trusting only `ca_pem`; `Ok` if it answers 200 `ok`.
pub async fn readyz(addr: SocketAddr, ca_pem: &str) -> Result<(), ReadyzError> {
    health(addr, ca_pem, "/readyz").await
}

/// Asks a health endpoint (`/readyz`, `/livez`) once; `Ok` if it answers 200 `ok`.
pub async fn health(addr: SocketAddr, ca_pem: &str, path: &str) -> Result<(), ReadyzError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| ReadyzError::Ca(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ReadyzError::Ca(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ReadyzError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    // The server may close without a TLS close_notify; what was read is what counts.
    if let Err(err) = tls.read_to_end(&mut response).await
        && response.is_empty()
    {
        return Err(err.into());
    }
    let response = String::from_utf8_lossy(&response);
    let status_ok = response
        .lines()
        .next()
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    if status_ok && body.lines().any(|l| l.trim() == "ok") {
        Ok(())
    } else {
        Err(ReadyzError::NotReady(
            response.lines().next().unwrap_or("no answer").to_string(),
        ))
    }
}
