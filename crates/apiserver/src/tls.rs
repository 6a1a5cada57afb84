//! The serving certificate: a self-signed CA and a serving certificate signed by it, created on
//! first start in `<data-dir>/server/tls/` (keys mode 0600) and reused afterwards.
//!
//! This is a stand-in for the real PKI of issue #4, which will own these files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// File names, as K3s names them.
const CA_CERT: &str = "server-ca.crt";
const CA_KEY: &str = "server-ca.key";
const SERVING_CERT: &str = "serving-kube-apiserver.crt";
const SERVING_KEY: &str = "serving-kube-apiserver.key";

/// A CA and a serving certificate signed by it, in PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The CA certificate clients trust (a kubeconfig's `certificate-authority-data`).
    pub ca_cert_pem: String,
    /// The serving certificate followed by the CA certificate.
    pub serving_chain_pem: String,
    serving_key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .finish_non_exhaustive()
    }
}

/// The names the serving certificate is valid for, besides any extra ones asked for.
fn default_sans() -> Vec<SanType> {
    let mut sans: Vec<SanType> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .filter_map(|n| (*n).try_into().ok().map(SanType::DnsName))
    .collect();
    for ip in ["127.0.0.1", "::1", "10.43.0.1"] {
        if let Ok(ip) = ip.parse() {
            sans.push(SanType::IpAddress(ip));
        }
    }
    sans
}

fn tls_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

impl TlsMaterial {
    /// A fresh CA and serving certificate, valid for the loopback names, the in-cluster
    /// `kubernetes` service names and `extra_ips`. Nothing is written.
    pub fn generate(extra_ips: &[std::net::IpAddr]) -> Result<Self> {
        Ok(Self::generate_with_ca_key(extra_ips)?.0)
    }

    /// Like [`TlsMaterial::generate`], also returning the CA key in PEM.
    fn generate_with_ca_key(extra_ips: &[std::net::IpAddr]) -> Result<(Self, String)> {
        let ca_key = KeyPair::generate().map_err(tls_err("CA key"))?;
        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("rk3s-server-ca@{}", crate::time::unix_now()),
        );
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err("CA"))?;
        let ca_cert_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().map_err(tls_err("serving key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = default_sans();
        for ip in extra_ips {
            if !ip.is_unspecified() && !params.subject_alt_names.contains(&SanType::IpAddress(*ip))
            {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(tls_err("serving certificate"))?;
        let material = TlsMaterial {
            serving_chain_pem: format!("{}{}", cert.pem(), ca_cert_pem),
            ca_cert_pem,
            serving_key_pem: key.serialize_pem(),
        };
        // The CA key is saved alongside: the PKI of issue #4 signs with it.
        Ok((material, issuer.key().serialize_pem()))
    }

    /// Loads the files from `dir`, or generates and saves them when any is missing.
    pub fn load_or_create(dir: &Path, extra_ips: &[std::net::IpAddr]) -> Result<Self> {
        let path = |name: &str| dir.join(name);
        let all = [CA_CERT, CA_KEY, SERVING_CERT, SERVING_KEY];
        if all.iter().all(|n| path(n).exists()) {
            let read = |name: &str| {
                std::fs::read_to_string(path(name)).map_err(|source| Error::File {
                    path: path(name),
                    source,
                })
            };
            let material = TlsMaterial {
                ca_cert_pem: read(CA_CERT)?,
                serving_chain_pem: read(SERVING_CERT)?,
                serving_key_pem: read(SERVING_KEY)?,
            };
            material.server_config()?; // fail early on a broken file
            tracing::info!(dir = %dir.display(), "using existing serving certificate");
            return Ok(material);
        }
        let (material, ca_key) = Self::generate_with_ca_key(extra_ips)?;
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&path(CA_CERT), &material.ca_cert_pem, 0o644)?;
        write_file(&path(CA_KEY), &ca_key, 0o600)?;
        write_file(&path(SERVING_CERT), &material.serving_chain_pem, 0o644)?;
        write_file(&path(SERVING_KEY), &material.serving_key_pem, 0o600)?;
        tracing::info!(dir = %dir.display(), "generated a new CA and serving certificate");
        Ok(material)
    }

    /// The rustls server configuration: HTTP/2 and HTTP/1.1 by ALPN, the ring provider.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.serving_chain_pem.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Tls(format!("serving certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("serving key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Tls(format!("serving certificate: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Writes `contents` to `path` with `mode`, through a temporary file and a rename.
fn write_file(path: &PathBuf, contents: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let err = |source| Error::File {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
