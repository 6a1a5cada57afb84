//! CertificateSigningRequest controllers: `csrapproving` approves kubelets' client
//! certificates, `csrsigning` signs approved requests for the four `kubernetes.io` signers.
//!
//! **Approving** (upstream's `sarApprover`). A pending CSR for
//! `kubernetes.io/kube-apiserver-client-kubelet` whose request is a kubelet client request
//! (subject `O=system:nodes`, `CN=system:node:<name>`, no SANs, usages `digital signature`,
//! `client auth` and optionally `key encipherment`) is approved when a SubjectAccessReview
//! says its requester may `create` `certificatesigningrequests/selfnodeclient` (the
//! requester is the node itself: its username is the CN) or
//! `certificatesigningrequests/nodeclient` (anyone else, e.g. a bootstrap token). The approval
//! is an `Approved` condition (`AutoApproved`) written through `/approval`. Other requests are
//! left to people (`kubectl certificate approve`).
//!
//! **Signing** (upstream's `csrsigning`). An approved, not denied, not failed CSR without a
//! certificate is checked against its signer's rules; a request that breaks them gets a
//! `Failed` condition (`SignerValidationFailure`); otherwise it is signed with the signer's CA
//! (`cluster-signing-*-cert-file`/`key-file`, read at each signing so that a rotated CA is
//! picked up) for min(`cluster-signing-duration`, `expirationSeconds`), not before now − 5 min
//! (not for short-lived certificates' end), never past the CA's own expiry, with the key
//! usages the CSR lists, and `status.certificate` is written through `/status`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use tokio::sync::watch;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use crate::ReconcileError;
use crate::config::NodeConfig;
use crate::util::{self, Backoff, Shared};

pub(crate) const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub(crate) const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
pub(crate) const APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub(crate) const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// How far back a certificate's validity starts (clock skew), as upstream.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Certificates shorter-lived than this do not lose the backdate at their end.
const SHORT: Duration = Duration::from_secs(8 * 3600);

/// What a certificate request asks for, read from its PEM.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub(crate) common_name: String,
    pub(crate) organizations: Vec<String>,
    dns: usize,
    ip: usize,
    email: usize,
    uri: usize,
}

/// Upstream's `ParseCSR`: one `CERTIFICATE REQUEST` PEM block with a valid signature.
pub(crate) fn parse_request(pem_bytes: &[u8]) -> Result<Request, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("cannot parse the certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the certificate request's signature is invalid".to_string())?;
    let subject = &csr.certification_request_info.subject;
    let mut r = Request {
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_string(),
        organizations: subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect(),
        ..Request::default()
    };
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(_) => r.dns += 1,
                        GeneralName::IPAddress(_) => r.ip += 1,
                        GeneralName::RFC822Name(_) => r.email += 1,
                        GeneralName::URI(_) => r.uri += 1,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(r)
}

fn usage_set(usages: &[String]) -> std::collections::BTreeSet<&str> {
    usages.iter().map(String::as_str).collect()
}

/// Upstream's `ValidateKubeletClientCSR`.
pub(crate) fn validate_kubelet_client(r: &Request, usages: &[String]) -> Result<(), String> {
    if r.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if r.dns > 0 {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if r.email > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if r.ip > 0 {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if r.uri > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !r.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    let u = usage_set(usages);
    let full: std::collections::BTreeSet<&str> =
        ["digital signature", "key encipherment", "client auth"].into();
    let no_rsa: std::collections::BTreeSet<&str> = ["digital signature", "client auth"].into();
    if u != full && u != no_rsa {
        return Err("usages did not match [client auth digital signature key encipherment]".into());
    }
    Ok(())
}

/// Upstream's `ValidateKubeletServingCSR`.
fn validate_kubelet_serving(r: &Request, usages: &[String]) -> Result<(), String> {
    if r.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if r.dns == 0 && r.ip == 0 {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if r.email > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if r.uri > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    let u = usage_set(usages);
    let full: std::collections::BTreeSet<&str> =
        ["digital signature", "key encipherment", "server auth"].into();
    let no_rsa: std::collections::BTreeSet<&str> = ["digital signature", "server auth"].into();
    if u != full && u != no_rsa {
        return Err("usages did not match [digital signature key encipherment server auth]".into());
    }
    if !r.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    Ok(())
}

/// Upstream's `validAPIServerClientUsages`.
fn validate_apiserver_client(usages: &[String]) -> Result<(), String> {
    let mut client_auth = false;
    for u in usages {
        match u.as_str() {
            "digital signature" | "key encipherment" => {}
            "client auth" => client_auth = true,
            other => return Err(format!("invalid usage for client certificate: {other}")),
        }
    }
    if !client_auth {
        return Err("missing required usage for client certificate: client auth".into());
    }
    Ok(())
}

fn has_condition(csr: &CertificateSigningRequest, type_: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn has_certificate(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

struct Ctx {
    client: Client,
    backoff: Backoff,
    signing: Option<Signing>,
}

async fn run_loop(
    name: &'static str,
    shared: Arc<Shared>,
    signing: Option<Signing>,
    stop: watch::Receiver<bool>,
) {
    let controller = Controller::new(
        Api::<CertificateSigningRequest>::all(shared.client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
    .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        client: shared.client.clone(),
        backoff: Backoff::default(),
        signing,
    });
    util::drain(
        name,
        abandon,
        controller.run(
            |csr, ctx| async move {
                let key = csr.name_any();
                let r = match &ctx.signing {
                    Some(s) => sign(&csr, &ctx.client, s).await,
                    None => approve(&csr, &ctx.client).await,
                };
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |csr, _e, ctx| util::error_action(&ctx.backoff, &csr.name_any()),
            ctx,
        ),
    )
    .await;
}

// -------------------------------------------------------------------------------------------
// approving

pub(crate) async fn run_approving(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    run_loop("csrapproving", shared, None, stop).await;
}

#[tracing::instrument(skip_all, fields(csr = %csr.name_any()))]
async fn approve(
    csr: &CertificateSigningRequest,
    client: &Client,
) -> Result<Action, ReconcileError> {
    if has_certificate(csr) || has_condition(csr, "Approved") || has_condition(csr, "Denied") {
        return Ok(Action::await_change());
    }
    if csr.spec.signer_name != KUBELET_CLIENT {
        return Ok(Action::await_change());
    }
    let req = parse_request(&csr.spec.request.0).map_err(|e| {
        ReconcileError::Invalid(format!("unable to parse csr {:?}: {e}", csr.name_any()))
    })?;
    let usages = csr.spec.usages.clone().unwrap_or_default();
    if validate_kubelet_client(&req, &usages).is_err() {
        return Ok(Action::await_change());
    }
    let username = csr.spec.username.clone().unwrap_or_default();
    let mut recognizers = Vec::new();
    if username == req.common_name {
        recognizers.push((
            "selfnodeclient",
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        ));
    }
    recognizers.push((
        "nodeclient",
        "Auto approving kubelet client certificate after SubjectAccessReview.",
    ));
    for (subresource, message) in &recognizers {
        if !authorized(client, csr, subresource).await? {
            continue;
        }
        let mut approved = csr.clone();
        let status = approved.status.get_or_insert_with(Default::default);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("AutoApproved".into()),
                message: Some((*message).into()),
                last_update_time: Some(Time(Timestamp::now())),
                last_transition_time: None,
            });
        Api::<CertificateSigningRequest>::all(client.clone())
            .replace_subresource(
                "approval",
                &csr.name_any(),
                &PostParams::default(),
                &approved,
            )
            .await?;
        tracing::info!(
            via = subresource,
            "approved kubelet client certificate request"
        );
        return Ok(Action::await_change());
    }
    // Recognised but not allowed: upstream retries with backoff (a binding may appear).
    tracing::debug!(
        tried = ?recognizers.iter().map(|r| r.0).collect::<Vec<_>>(),
        "recognized csr but subject access review was not approved"
    );
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Whether the CSR's requester may `create` `certificatesigningrequests/<subresource>`.
async fn authorized(
    client: &Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, kube::Error> {
    let spec = &csr.spec;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username.clone(),
            uid: spec.uid.clone(),
            groups: spec.groups.clone(),
            extra: spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                verb: Some("create".into()),
                subresource: Some(subresource.into()),
                version: Some("*".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

// -------------------------------------------------------------------------------------------
// signing

/// The CA files of each signer and the longest validity.
#[derive(Debug, Clone)]
pub(crate) struct Signing {
    signers: Vec<(&'static str, PathBuf, PathBuf)>,
    duration: Duration,
}

impl Signing {
    /// The signers that have CA files (a signer's own, else `cluster-signing-*`); `None`
    /// when none has.
    pub(crate) fn from_config(c: &NodeConfig) -> Option<Signing> {
        let pick = |cert: &Option<PathBuf>, key: &Option<PathBuf>| match (cert, key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => match (&c.cluster_signing_cert_file, &c.cluster_signing_key_file) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                _ => None,
            },
        };
        let mut signers = Vec::new();
        for (name, files) in [
            (
                KUBELET_CLIENT,
                pick(
                    &c.cluster_signing_kubelet_client_cert_file,
                    &c.cluster_signing_kubelet_client_key_file,
                ),
            ),
            (
                KUBELET_SERVING,
                pick(
                    &c.cluster_signing_kubelet_serving_cert_file,
                    &c.cluster_signing_kubelet_serving_key_file,
                ),
            ),
            (
                APISERVER_CLIENT,
                pick(
                    &c.cluster_signing_kube_apiserver_client_cert_file,
                    &c.cluster_signing_kube_apiserver_client_key_file,
                ),
            ),
            (
                LEGACY_UNKNOWN,
                pick(
                    &c.cluster_signing_legacy_unknown_cert_file,
                    &c.cluster_signing_legacy_unknown_key_file,
                ),
            ),
        ] {
            if let Some((cert, key)) = files {
                signers.push((name, cert, key));
            }
        }
        (!signers.is_empty()).then(|| Signing {
            signers,
            duration: Duration::from_secs(c.cluster_signing_duration),
        })
    }

    fn files(&self, signer: &str) -> Option<(&Path, &Path)> {
        self.signers
            .iter()
            .find(|(n, _, _)| *n == signer)
            .map(|(_, c, k)| (c.as_path(), k.as_path()))
    }
}

pub(crate) async fn run_signing(
    shared: Arc<Shared>,
    config: NodeConfig,
    stop: watch::Receiver<bool>,
) {
    let Some(signing) = Signing::from_config(&config) else {
        tracing::warn!("csrsigning: no cluster-signing-cert-file/key-file configured; not signing");
        return;
    };
    run_loop("csrsigning", shared, Some(signing), stop).await;
}

/// The signer's rules for a request (upstream's `isRequestForSignerFn`).
fn validate_for_signer(signer: &str, r: &Request, usages: &[String]) -> Result<(), String> {
    match signer {
        KUBELET_CLIENT => validate_kubelet_client(r, usages),
        KUBELET_SERVING => validate_kubelet_serving(r, usages),
        APISERVER_CLIENT => validate_apiserver_client(usages),
        _ => Ok(()),
    }
}

#[tracing::instrument(skip_all, fields(csr = %csr.name_any()))]
async fn sign(
    csr: &CertificateSigningRequest,
    client: &Client,
    signing: &Signing,
) -> Result<Action, ReconcileError> {
    if !has_condition(csr, "Approved")
        || has_condition(csr, "Denied")
        || has_condition(csr, "Failed")
    {
        return Ok(Action::await_change());
    }
    let Some((cert_file, key_file)) = signing.files(&csr.spec.signer_name) else {
        return Ok(Action::await_change());
    };
    if has_certificate(csr) {
        return Ok(Action::await_change());
    }
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let req = parse_request(&csr.spec.request.0).map_err(|e| {
        ReconcileError::Invalid(format!("unable to parse csr {:?}: {e}", csr.name_any()))
    })?;
    if let Err(message) = validate_for_signer(&csr.spec.signer_name, &req, &usages) {
        let mut failed = csr.clone();
        failed
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("SignerValidationFailure".into()),
                message: Some(message.clone()),
                last_update_time: Some(Time(Timestamp::now())),
                last_transition_time: None,
            });
        api.replace_status(&csr.name_any(), &PostParams::default(), &failed)
            .await?;
        tracing::info!(%message, "request does not meet its signer's rules; marked Failed");
        return Ok(Action::await_change());
    }
    let mut duration = signing.duration;
    if let Some(secs) = csr.spec.expiration_seconds {
        duration = duration.min(Duration::from_secs(u64::from(secs.max(0).unsigned_abs())));
    }
    let pem = sign_request(&csr.spec.request.0, &usages, duration, cert_file, key_file)
        .map_err(|e| ReconcileError::Invalid(format!("error auto signing csr: {e}")))?;
    let mut signed = csr.clone();
    signed
        .status
        .get_or_insert_with(Default::default)
        .certificate = Some(ByteString(pem.into_bytes()));
    api.replace_status(&csr.name_any(), &PostParams::default(), &signed)
        .await?;
    tracing::info!(signer = %csr.spec.signer_name, "signed certificate request");
    Ok(Action::await_change())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Maps the CSR's usages to key usages and extended key usages (upstream's
/// `keyUsagesFromStrings`).
fn key_usages(
    usages: &[String],
) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), String> {
    let mut ku = Vec::new();
    let mut eku = Vec::new();
    let mut unknown = Vec::new();
    for u in usages {
        let k = match u.as_str() {
            "signing" | "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
            "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
            "cert sign" => Some(KeyUsagePurpose::KeyCertSign),
            "crl sign" => Some(KeyUsagePurpose::CrlSign),
            "encipher only" => Some(KeyUsagePurpose::EncipherOnly),
            "decipher only" => Some(KeyUsagePurpose::DecipherOnly),
            _ => None,
        };
        if let Some(k) = k {
            if !ku.contains(&k) {
                ku.push(k);
            }
            continue;
        }
        let e = match u.as_str() {
            "any" => ExtendedKeyUsagePurpose::Any,
            "server auth" => ExtendedKeyUsagePurpose::ServerAuth,
            "client auth" => ExtendedKeyUsagePurpose::ClientAuth,
            "code signing" => ExtendedKeyUsagePurpose::CodeSigning,
            "email protection" | "s/mime" => ExtendedKeyUsagePurpose::EmailProtection,
            "timestamping" => ExtendedKeyUsagePurpose::TimeStamping,
            "ocsp signing" => ExtendedKeyUsagePurpose::OcspSigning,
            "ipsec end system" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5]),
            "ipsec tunnel" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6]),
            "ipsec user" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7]),
            "microsoft sgc" => {
                ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3])
            }
            "netscape sgc" => ExtendedKeyUsagePurpose::Other(vec![2, 16, 840, 1, 113730, 4, 1]),
            other => {
                unknown.push(format!("{other:?}"));
                continue;
            }
        };
        if !eku.contains(&e) {
            eku.push(e);
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "unrecognized usage values: [{}]",
            unknown.join(" ")
        ));
    }
    Ok((ku, eku))
}

/// Signs a PEM certificate request with the CA in `cert_file`/`key_file`; returns the
/// certificate as PEM.
pub(crate) fn sign_request(
    request_pem: &[u8],
    usages: &[String],
    ttl: Duration,
    cert_file: &Path,
    key_file: &Path,
) -> Result<String, String> {
    let ca_pem = read(cert_file)?;
    let key = KeyPair::from_pem(&read(key_file)?).map_err(|e| format!("CA key: {e}"))?;
    let ca_not_after = {
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .map_err(|e| format!("CA certificate: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("CA certificate: {e}"))?;
        cert.validity().not_after.timestamp()
    };
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| format!("CA certificate: {e}"))?;
    let text =
        std::str::from_utf8(request_pem).map_err(|_| "the request is not PEM".to_string())?;
    let mut req = CertificateSigningRequestParams::from_pem(text).map_err(|e| e.to_string())?;
    let (ku, eku) = key_usages(usages)?;
    let now = time::OffsetDateTime::now_utc();
    let ttl = time::Duration::try_from(ttl).map_err(|e| e.to_string())?;
    let backdate = time::Duration::try_from(BACKDATE).map_err(|e| e.to_string())?;
    let short = time::Duration::try_from(SHORT).map_err(|e| e.to_string())?;
    let signer_not_after = time::OffsetDateTime::from_unix_timestamp(ca_not_after)
        .map_err(|e| format!("CA certificate: {e}"))?;
    if now >= signer_not_after {
        return Err(format!(
            "refusing to sign a certificate that expired in the past: NotAfter={signer_not_after}"
        ));
    }
    let p = &mut req.params;
    p.not_before = now - backdate;
    p.not_after = if ttl < short {
        now + ttl
    } else {
        now + ttl - backdate
    };
    if p.not_after > signer_not_after {
        p.not_after = signer_not_after;
    }
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = ku;
    p.extended_key_usages = eku;
    p.custom_extensions.clear();
    p.use_authority_key_identifier_extension = true;
    let cert = req.signed_by(&issuer).map_err(|e| e.to_string())?;
    Ok(cert.pem())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn csr_pem(cn: &str, orgs: &[&str], dns: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kubelet_client_requests_are_recognised_as_upstream() {
        let ok =
            parse_request(csr_pem("system:node:n1", &["system:nodes"], &[]).as_bytes()).unwrap();
        assert_eq!(ok.common_name, "system:node:n1");
        let usages = s(&["digital signature", "client auth"]);
        validate_kubelet_client(&ok, &usages).unwrap();
        validate_kubelet_client(
            &ok,
            &s(&["key encipherment", "digital signature", "client auth"]),
        )
        .unwrap();
        assert_eq!(
            validate_kubelet_client(&ok, &s(&["client auth"])).unwrap_err(),
            "usages did not match [client auth digital signature key encipherment]"
        );
        let other = parse_request(csr_pem("alice", &["system:nodes"], &[]).as_bytes()).unwrap();
        assert_eq!(
            validate_kubelet_client(&other, &usages).unwrap_err(),
            "subject common name does not begin with system:node:"
        );
        let sans = parse_request(csr_pem("system:node:n1", &["system:nodes"], &["n1"]).as_bytes())
            .unwrap();
        assert_eq!(
            validate_kubelet_client(&sans, &usages).unwrap_err(),
            "DNS subjectAltNames are not allowed"
        );
        validate_kubelet_serving(&sans, &s(&["digital signature", "server auth"])).unwrap();
        assert!(parse_request(b"garbage").is_err());
    }

    #[test]
    fn usages_map_and_unknown_ones_are_refused() {
        let (ku, eku) = key_usages(&s(&["digital signature", "client auth", "signing"])).unwrap();
        assert_eq!(ku, [KeyUsagePurpose::DigitalSignature]);
        assert_eq!(eku, [ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(
            key_usages(&s(&["bogus"])).unwrap_err(),
            "unrecognized usage values: [\"bogus\"]"
        );
    }
}
