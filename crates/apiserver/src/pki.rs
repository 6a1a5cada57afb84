//! The cluster PKI, as K3s lays it out in `<data-dir>/server/tls/`: three CAs (server, client,
//! request-header), the apiserver serving certificate, the service-account signing key, and the
//! client certificates of the admin and the control-plane components; kubelet client
//! certificates on demand.
//!
//! On start everything missing is created; what exists is reused (keys mode 0600). A leaf
//! certificate is issued again when it is within [`RENEW_BEFORE`] of expiry, when it is not
//! signed by the CA on disk, or (the serving certificate) when its SANs no longer cover the
//! configured names and addresses.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// Leaf certificates are renewed on start when they expire within this time (K3s: 120 days).
pub const RENEW_BEFORE: Duration = Duration::from_secs(120 * 24 * 3600);
/// Validity of a new leaf certificate (K3s: one year).
const LEAF_VALIDITY: time::Duration = time::Duration::days(365);
/// Validity of a new CA (K3s: ten years).
const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// The group of cluster administrators: authorization is skipped for its members.
pub const SYSTEM_MASTERS: &str = "system:masters";
/// The group of kubelets.
pub const SYSTEM_NODES: &str = "system:nodes";

/// What the serving certificate must be valid for, besides the fixed names (`localhost`,
/// `kubernetes`, `kubernetes.default[.svc[.cluster.local]]`, 127.0.0.1, ::1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiOptions {
    /// This node's name (a DNS SAN).
    pub node_name: Option<String>,
    /// This node's addresses (the address the apiserver binds, when not a wildcard).
    pub node_ips: Vec<IpAddr>,
    /// `--tls-san`: extra names or addresses.
    pub tls_sans: Vec<String>,
    /// The first IP of the service CIDR (the `kubernetes` Service's cluster IP).
    pub service_ip: IpAddr,
}

impl Default for PkiOptions {
    fn default() -> Self {
        PkiOptions {
            node_name: None,
            node_ips: Vec::new(),
            tls_sans: Vec::new(),
            service_ip: IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)),
        }
    }
}

impl PkiOptions {
    /// The SANs the serving certificate must carry.
    pub fn serving_sans(&self) -> Vec<SanType> {
        let mut sans = Vec::new();
        let mut push = |san: SanType| {
            if !sans.contains(&san) {
                sans.push(san);
            }
        };
        let mut dns = vec![
            "localhost".to_string(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        dns.extend(self.node_name.iter().cloned());
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            self.service_ip,
        ];
        ips.extend(self.node_ips.iter().filter(|ip| !ip.is_unspecified()));
        for san in &self.tls_sans {
            match san.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(san.clone()),
            }
        }
        for name in dns {
            if let Ok(name) = name.as_str().try_into() {
                push(SanType::DnsName(name));
            }
        }
        for ip in ips {
            push(SanType::IpAddress(ip));
        }
        sans
    }
}

/// A certificate (PEM; leaves are followed by their CA) and its private key (PEM).
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The whole PKI of a server.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Signs the serving certificates; clients trust it (`certificate-authority-data`).
    pub server_ca: CertKey,
    /// Signs client certificates; the apiserver accepts client certificates it signed.
    pub client_ca: CertKey,
    /// Signs the front proxy's client certificate (request-header authentication).
    pub request_header_ca: CertKey,
    /// The apiserver's serving certificate (chain) and key.
    pub serving: CertKey,
    /// `system:admin` in `system:masters`.
    pub admin: CertKey,
    /// `system:kube-controller-manager`.
    pub controller: CertKey,
    /// `system:kube-scheduler`.
    pub scheduler: CertKey,
    /// `system:kube-proxy`.
    pub kube_proxy: CertKey,
    /// The apiserver's own client certificate towards kubelets (`system:apiserver` in
    /// `system:masters`, as K3s' `client-kube-apiserver`): logs, exec, attach, port-forward and
    /// node proxying are requests the apiserver makes to a kubelet's :10250.
    pub kubelet_client: CertKey,
    /// The service-account token signing key (ECDSA P-256, PKCS#8 PEM).
    pub service_account_key_pem: String,
}

/// A leaf to issue: subject and usage.
struct LeafSpec<'a> {
    file: &'a str,
    common_name: &'a str,
    organizations: &'a [&'a str],
    /// `Some`: a serving certificate with these SANs; `None`: a client certificate.
    server_sans: Option<Vec<SanType>>,
}

fn pki_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

impl Pki {
    /// A fresh PKI in memory; nothing is written.
    pub fn generate(opts: &PkiOptions) -> Result<Pki> {
        Self::build(None, opts)
    }

    /// Loads the PKI from `dir` (`<data-dir>/server/tls`), creating what is missing and renewing
    /// what is due.
    pub fn load_or_create(dir: &Path, opts: &PkiOptions) -> Result<Pki> {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::build(Some(dir), opts)
    }

    fn build(dir: Option<&Path>, opts: &PkiOptions) -> Result<Pki> {
        let stamp = crate::time::unix_now();
        let server_ca = load_or_create_ca(dir, "server-ca", &format!("rk3s-server-ca@{stamp}"))?;
        let client_ca = load_or_create_ca(dir, "client-ca", &format!("rk3s-client-ca@{stamp}"))?;
        let request_header_ca = load_or_create_ca(
            dir,
            "request-header-ca",
            &format!("rk3s-request-header-ca@{stamp}"),
        )?;
        let serving = load_or_issue(
            dir,
            &server_ca,
            LeafSpec {
                file: "serving-kube-apiserver",
                common_name: "kube-apiserver",
                organizations: &[],
                server_sans: Some(opts.serving_sans()),
            },
        )?;
        let client = |file, common_name, organizations| {
            load_or_issue(
                dir,
                &client_ca,
                LeafSpec {
                    file,
                    common_name,
                    organizations,
                    server_sans: None,
                },
            )
        };
        let admin = client("client-admin", "system:admin", &[SYSTEM_MASTERS])?;
        let controller = client("client-controller", "system:kube-controller-manager", &[])?;
        let scheduler = client("client-scheduler", "system:kube-scheduler", &[])?;
        let kube_proxy = client("client-kube-proxy", "system:kube-proxy", &[])?;
        let kubelet_client = client(
            "client-kube-apiserver",
            "system:apiserver",
            &[SYSTEM_MASTERS],
        )?;
        let service_account_key_pem = match dir.map(|d| d.join("service.key")) {
            Some(path) if path.exists() => {
                let pem = read(&path)?;
                KeyPair::from_pem(&pem).map_err(pki_err("service.key"))?;
                pem
            }
            path => {
                let pem = KeyPair::generate()
                    .map_err(pki_err("service-account key"))?
                    .serialize_pem();
                if let Some(path) = path {
                    write_file(&path, &pem, 0o600)?;
                }
                pem
            }
        };
        Ok(Pki {
            server_ca,
            client_ca,
            request_header_ca,
            serving,
            admin,
            controller,
            scheduler,
            kube_proxy,
            kubelet_client,
            service_account_key_pem,
        })
    }

    /// A client certificate for `common_name` in `organizations` (the user and its groups),
    /// signed by the client CA, valid for a year. Nothing is written. At most one organization:
    /// rcgen writes one value per attribute type (certificates from elsewhere with several O
    /// values are read with all of them).
    pub fn issue_client_cert(&self, common_name: &str, organizations: &[&str]) -> Result<CertKey> {
        if organizations.len() > 1 {
            return Err(Error::Tls(format!(
                "{common_name}: a certificate issued here carries at most one organization"
            )));
        }
        issue(
            &self.client_ca,
            &LeafSpec {
                file: "",
                common_name,
                organizations,
                server_sans: None,
            },
        )
    }

    /// A front proxy's client certificate (K3s: `client-auth-proxy`, CN `system:auth-proxy`),
    /// signed by the request-header CA: requests with it are authenticated by their
    /// `X-Remote-User`/`X-Remote-Group`/`X-Remote-Extra-*` headers.
    pub fn issue_proxy_client_cert(&self, common_name: &str) -> Result<CertKey> {
        issue(
            &self.request_header_ca,
            &LeafSpec {
                file: "",
                common_name,
                organizations: &[],
                server_sans: None,
            },
        )
    }

    /// The DER subject of the request-header CA (what the front proxy's certificate names as
    /// its issuer).
    pub(crate) fn request_header_subject(&self) -> Option<Vec<u8>> {
        let der = pem_certs(&self.request_header_ca.cert_pem, "request-header CA")
            .ok()?
            .into_iter()
            .next()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some(cert.subject().as_raw().to_vec())
    }

    /// A kubelet's client certificate: `system:node:<node>` in `system:nodes`.
    pub fn issue_kubelet_client_cert(&self, node: &str) -> Result<CertKey> {
        self.issue_client_cert(&format!("system:node:{node}"), &[SYSTEM_NODES])
    }

    /// A joining kubelet's client certificate (`system:node:<node>` in `system:nodes`, client
    /// CA), for the key of `csr` (DER) when given (then `key_pem` is empty), else with a new key.
    pub fn kubelet_client_cert(&self, node: &str, csr: Option<&[u8]>) -> Result<CertKey> {
        let cn = format!("system:node:{node}");
        let spec = LeafSpec {
            file: "",
            common_name: &cn,
            organizations: &[SYSTEM_NODES],
            server_sans: None,
        };
        match csr {
            Some(der) => issue_for_csr(&self.client_ca, &spec, der),
            None => issue(&self.client_ca, &spec),
        }
    }

    /// A kubelet's serving certificate (CN = the node name, server CA), valid for the node
    /// name, `localhost`, 127.0.0.1 and `ips`; for the key of `csr` when given, as
    /// [`Pki::kubelet_client_cert`].
    pub fn kubelet_serving_cert(
        &self,
        node: &str,
        ips: &[IpAddr],
        csr: Option<&[u8]>,
    ) -> Result<CertKey> {
        let mut sans = Vec::new();
        for name in [node, "localhost"] {
            let name = name
                .try_into()
                .map_err(|e| Error::Tls(format!("SAN {name:?}: {e}")))?;
            sans.push(SanType::DnsName(name));
        }
        for ip in std::iter::once(IpAddr::V4(Ipv4Addr::LOCALHOST)).chain(ips.iter().copied()) {
            if !sans.contains(&SanType::IpAddress(ip)) {
                sans.push(SanType::IpAddress(ip));
            }
        }
        let spec = LeafSpec {
            file: "",
            common_name: node,
            organizations: &[],
            server_sans: Some(sans),
        };
        match csr {
            Some(der) => issue_for_csr(&self.server_ca, &spec, der),
            None => issue(&self.server_ca, &spec),
        }
    }

    /// The rustls server configuration: the serving chain; client certificates signed by the
    /// client CA are verified when offered (clients without one are let through, to be
    /// authenticated otherwise); HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs = pem_certs(&self.serving.cert_pem, "serving certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.serving.key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("serving key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(&self.client_ca.cert_pem, "client CA")? {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("client CA: {e}")))?;
        }
        // The front proxy's certificate (request-header authentication) is verified too; the
        // auth middleware tells the two apart by issuer.
        for cert in pem_certs(&self.request_header_ca.cert_pem, "request-header CA")? {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("request-header CA: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(format!("client CA: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| Error::Tls(format!("serving certificate: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The TLS configuration of the apiserver's connections to kubelets: the kubelet's serving
    /// certificate must chain to the server CA (kubelets get theirs from this PKI when they
    /// join), and the apiserver presents [`Pki::kubelet_client`].
    pub fn kubelet_client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(&self.server_ca.cert_pem, "server CA")? {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("server CA: {e}")))?;
        }
        let certs = pem_certs(&self.kubelet_client.cert_pem, "kubelet client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.kubelet_client.key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("kubelet client key: {e}")))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| Error::Tls(format!("kubelet client certificate: {e}")))?;
        Ok(Arc::new(config))
    }

    /// A kubeconfig for `server` (an `https://` URL) with the admin client certificate.
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        kubeconfig(server, &self.server_ca.cert_pem, &self.admin)
    }
}

/// A kubeconfig for `server` trusting `ca_pem`, authenticating with `client`.
pub fn kubeconfig(server: &str, ca_pem: &str, client: &CertKey) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: default\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority-data: {ca}\n\
         contexts:\n\
         - name: default\n  \
           context:\n    \
             cluster: default\n    \
             user: default\n\
         current-context: default\n\
         preferences: {{}}\n\
         users:\n\
         - name: default\n  \
           user:\n    \
             client-certificate-data: {cert}\n    \
             client-key-data: {key}\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

fn pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what}: {e}")))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn dn(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Loads `<base>.crt`/`<base>.key` from `dir`, or creates (and saves) a new CA.
fn load_or_create_ca(dir: Option<&Path>, base: &str, common_name: &str) -> Result<CertKey> {
    if let Some(dir) = dir {
        let (crt, key) = (
            dir.join(format!("{base}.crt")),
            dir.join(format!("{base}.key")),
        );
        if crt.exists() && key.exists() {
            let ca = CertKey {
                cert_pem: read(&crt)?,
                key_pem: read(&key)?,
            };
            issuer_of(&ca)?; // fail early on a broken file
            return Ok(ca);
        }
    }
    let key = KeyPair::generate().map_err(pki_err("CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(pki_err(base))?;
    let ca = CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    if let Some(dir) = dir {
        write_file(&dir.join(format!("{base}.crt")), &ca.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{base}.key")), &ca.key_pem, 0o600)?;
        tracing::info!(ca = base, "generated a new certificate authority");
    }
    Ok(ca)
}

fn issuer_of(ca: &CertKey) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(pki_err("CA key"))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(pki_err("CA certificate"))
}

/// Reuses the leaf in `dir` when it is still good, else issues and saves a new one.
fn load_or_issue(dir: Option<&Path>, ca: &CertKey, spec: LeafSpec<'_>) -> Result<CertKey> {
    if let Some(dir) = dir {
        let (crt, key) = (
            dir.join(format!("{}.crt", spec.file)),
            dir.join(format!("{}.key", spec.file)),
        );
        if crt.exists() && key.exists() {
            let leaf = CertKey {
                cert_pem: read(&crt)?,
                key_pem: read(&key)?,
            };
            match leaf_still_good(&leaf, ca, spec.server_sans.as_deref()) {
                Ok(()) => return Ok(leaf),
                Err(why) => tracing::info!(cert = spec.file, why, "issuing a new certificate"),
            }
        }
    }
    let leaf = issue(ca, &spec)?;
    if let Some(dir) = dir {
        write_file(
            &dir.join(format!("{}.crt", spec.file)),
            &leaf.cert_pem,
            0o644,
        )?;
        write_file(
            &dir.join(format!("{}.key", spec.file)),
            &leaf.key_pem,
            0o600,
        )?;
    }
    Ok(leaf)
}

/// `Ok` when `leaf` is signed by `ca`, its key parses, it is valid for more than
/// [`RENEW_BEFORE`], and (a serving certificate) covers `sans`; else why not.
fn leaf_still_good(
    leaf: &CertKey,
    ca: &CertKey,
    sans: Option<&[SanType]>,
) -> std::result::Result<(), String> {
    KeyPair::from_pem(&leaf.key_pem).map_err(|e| format!("key: {e}"))?;
    let leaf_der = first_der(&leaf.cert_pem)?;
    let ca_der = first_der(&ca.cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf_der).map_err(|e| e.to_string())?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| e.to_string())?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err("not signed by the current CA".into());
    }
    let remaining = cert.validity().not_after.timestamp() - crate::time::unix_now();
    if remaining < RENEW_BEFORE.as_secs() as i64 {
        return Err(format!("expires in {} days", remaining / 86400));
    }
    if let Some(sans) = sans {
        let have = cert_sans(&cert);
        if let Some(missing) = sans.iter().find(|s| !have.contains(s)) {
            return Err(format!("SAN {missing:?} missing"));
        }
    }
    Ok(())
}

fn first_der(pem: &str) -> std::result::Result<Vec<u8>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "no certificate".to_string())?
        .map(|c| c.to_vec())
        .map_err(|e| e.to_string())
}

fn cert_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<SanType> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => (*d).try_into().ok().map(SanType::DnsName),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|o| SanType::IpAddress(IpAddr::from(o))),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|o| SanType::IpAddress(IpAddr::from(o))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Issues a leaf signed by `ca` with a new key; the certificate PEM is followed by the CA's.
fn issue(ca: &CertKey, spec: &LeafSpec<'_>) -> Result<CertKey> {
    let issuer = issuer_of(ca)?;
    let key = KeyPair::generate().map_err(pki_err("key"))?;
    let cert = leaf_params(spec)
        .signed_by(&key, &issuer)
        .map_err(pki_err(spec.common_name))?;
    Ok(CertKey {
        cert_pem: format!("{}{}", cert.pem(), ca.cert_pem),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a leaf signed by `ca` for the public key of a PKCS#10 request (DER), whose subject
/// and extensions are ignored: `spec` decides them. The key stays with the requester, so the
/// result's `key_pem` is empty.
fn issue_for_csr(ca: &CertKey, spec: &LeafSpec<'_>, csr_der: &[u8]) -> Result<CertKey> {
    let issuer = issuer_of(ca)?;
    let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let mut csr = rcgen::CertificateSigningRequestParams::from_der(&der)
        .map_err(pki_err("certificate signing request"))?;
    csr.params = leaf_params(spec);
    let cert = csr.signed_by(&issuer).map_err(pki_err(spec.common_name))?;
    Ok(CertKey {
        cert_pem: format!("{}{}", cert.pem(), ca.cert_pem),
        key_pem: String::new(),
    })
}

/// A new private key (PEM) and a certificate signing request for it (DER), for a client that
/// asks a server to sign its certificate without sending its key (the joining agent).
pub fn new_key_and_csr(common_name: &str) -> Result<(String, Vec<u8>)> {
    let key = KeyPair::generate().map_err(pki_err("key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name, &[]);
    let csr = params
        .serialize_request(&key)
        .map_err(pki_err("certificate signing request"))?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

fn leaf_params(spec: &LeafSpec<'_>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(spec.common_name, spec.organizations);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    match &spec.server_sans {
        Some(sans) => {
            params.subject_alt_names = sans.clone();
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        None => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + LEAF_VALIDITY;
    params.serial_number = Some(random_serial());
    params
}

/// Whether a certificate names `subject` (DER) as its issuer.
pub(crate) fn issued_by(der: &[u8], subject: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, cert)| cert.issuer().as_raw() == subject)
}

/// The user a verified client certificate names: CN and the O values.
pub(crate) fn cert_identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())?
        .to_string();
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    Some((cn, orgs))
}

/// Writes `contents` to `path` with `mode`, through a temporary file and a rename.
pub(crate) fn write_file(path: &PathBuf, contents: &str, mode: u32) -> Result<()> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn opts() -> PkiOptions {
        PkiOptions {
            node_name: Some("node-1".into()),
            node_ips: vec!["192.168.1.10".parse().unwrap()],
            tls_sans: vec!["api.example.com".into(), "10.0.0.7".into()],
            ..PkiOptions::default()
        }
    }

    fn parse(pem: &str) -> Vec<u8> {
        first_der(pem).unwrap()
    }

    #[test]
    fn serving_cert_has_every_san() {
        let pki = Pki::generate(&opts()).unwrap();
        let der = parse(&pki.serving.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = cert_sans(&cert);
        for want in opts().serving_sans() {
            assert!(sans.contains(&want), "{want:?} missing from {sans:?}");
        }
        let names: Vec<String> = sans.iter().map(|s| format!("{s:?}")).collect();
        let all = names.join(" ");
        for n in [
            "kubernetes.default.svc.cluster.local",
            "node-1",
            "api.example.com",
            "10.43.0.1",
            "192.168.1.10",
            "10.0.0.7",
            "::1",
            "127.0.0.1",
            "localhost",
        ] {
            assert!(all.contains(n), "{n} missing from {all}");
        }
        assert!(
            leaf_still_good(&pki.serving, &pki.server_ca, Some(&opts().serving_sans())).is_ok()
        );
    }

    #[test]
    fn client_certs_name_users_and_groups() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        let id = |ck: &CertKey| cert_identity(&parse(&ck.cert_pem)).unwrap();
        assert_eq!(
            id(&pki.admin),
            ("system:admin".into(), vec!["system:masters".to_string()])
        );
        assert_eq!(id(&pki.controller).0, "system:kube-controller-manager");
        assert_eq!(id(&pki.scheduler).0, "system:kube-scheduler");
        assert_eq!(id(&pki.kube_proxy).0, "system:kube-proxy");
        assert_eq!(
            id(&pki.kubelet_client),
            (
                "system:apiserver".into(),
                vec!["system:masters".to_string()]
            )
        );
        let kubelet = pki.issue_kubelet_client_cert("n1").unwrap();
        assert_eq!(
            id(&kubelet),
            ("system:node:n1".into(), vec!["system:nodes".to_string()])
        );
        // Signed by the client CA, not the server CA.
        assert!(leaf_still_good(&kubelet, &pki.client_ca, None).is_ok());
        assert!(leaf_still_good(&kubelet, &pki.server_ca, None).is_err());
    }

    #[test]
    fn kubelet_certs_for_a_csr_keep_the_key_with_the_requester() {
        let pki = Pki::generate(&PkiOptions::default()).unwrap();
        let (key_pem, csr) = new_key_and_csr("anything").unwrap();
        let client = pki.kubelet_client_cert("n1", Some(&csr)).unwrap();
        assert!(client.key_pem.is_empty());
        assert_eq!(
            cert_identity(&parse(&client.cert_pem)).unwrap(),
            ("system:node:n1".into(), vec!["system:nodes".to_string()])
        );
        let with_key = CertKey {
            cert_pem: client.cert_pem.clone(),
            key_pem: key_pem.clone(),
        };
        assert!(leaf_still_good(&with_key, &pki.client_ca, None).is_ok());
        // The certificate carries the requester's public key.
        let der = parse(&client.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );

        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let serving = pki.kubelet_serving_cert("n1", &[ip], Some(&csr)).unwrap();
        let der = parse(&serving.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = cert_sans(&cert);
        for want in [
            SanType::DnsName("n1".try_into().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress(ip),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ] {
            assert!(sans.contains(&want), "{want:?} missing from {sans:?}");
        }
        let serving = CertKey {
            cert_pem: serving.cert_pem,
            key_pem,
        };
        assert!(leaf_still_good(&serving, &pki.server_ca, None).is_ok());
        assert!(pki.kubelet_client_cert("n1", Some(b"not a csr")).is_err());
    }

    #[test]
    fn files_are_reused_renewed_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path(), &opts()).unwrap();
        for key in [
            "server-ca.key",
            "client-ca.key",
            "request-header-ca.key",
            "serving-kube-apiserver.key",
            "client-admin.key",
            "client-controller.key",
            "client-scheduler.key",
            "client-kube-proxy.key",
            "client-kube-apiserver.key",
            "service.key",
        ] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let second = Pki::load_or_create(dir.path(), &opts()).unwrap();
        assert_eq!(first.server_ca.cert_pem, second.server_ca.cert_pem);
        assert_eq!(first.serving.cert_pem, second.serving.cert_pem);
        assert_eq!(first.admin.cert_pem, second.admin.cert_pem);
        assert_eq!(
            first.service_account_key_pem,
            second.service_account_key_pem
        );

        // A new --tls-san: the serving certificate is issued again, the CA and clients stay.
        let mut more = opts();
        more.tls_sans.push("other.example.com".into());
        let third = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_eq!(first.server_ca.cert_pem, third.server_ca.cert_pem);
        assert_ne!(first.serving.cert_pem, third.serving.cert_pem);
        assert_eq!(first.admin.cert_pem, third.admin.cert_pem);

        // A leaf that expires within 120 days is renewed on start.
        let short = {
            let issuer = issuer_of(&first.client_ca).unwrap();
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name = dn("system:admin", &[SYSTEM_MASTERS]);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
            let cert = params.signed_by(&key, &issuer).unwrap();
            CertKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        };
        write_file(&dir.path().join("client-admin.crt"), &short.cert_pem, 0o644).unwrap();
        write_file(&dir.path().join("client-admin.key"), &short.key_pem, 0o600).unwrap();
        let fourth = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_ne!(fourth.admin.cert_pem, short.cert_pem);
        assert!(leaf_still_good(&fourth.admin, &fourth.client_ca, None).is_ok());
    }
}
