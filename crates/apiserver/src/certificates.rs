//! The certificates admission plugins of upstream, for CertificateSigningRequests:
//!
//! - **CertificateApproval**: an update through `/approval` needs `approve` on `signers` for
//!   the CSR's `spec.signerName` (of the stored object) — "user not permitted to approve
//!   requests with signerName ...";
//! - **CertificateSigning**: an update through `/status` that changes `status.certificate` or
//!   `status.conditions` needs `sign` on `signers` — "user not permitted to sign requests with
//!   signerName ...";
//! - **CertificateSubjectRestriction**: a new CSR for `kubernetes.io/kube-apiserver-client`
//!   may not ask for the group (O) `system:masters` — "use of
//!   kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed".
//!
//! Permission for a signer is upstream's `IsAuthorizedForSignerName`: the verb on the
//! `signers` resource named exactly, or named `<domain>/*`. All refusals are 403 Forbidden on
//! the CSR.

use base64::Engine as _;
use serde_json::Value;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer as _;

use crate::auth::UserInfo;
use crate::registry::ResourceInfo;
use crate::rest::object_meta_str;
use crate::server::AppState;
use crate::status::ApiError;

/// The signer whose client certificates the apiserver trusts.
const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

pub(crate) fn is_csr(info: &ResourceInfo) -> bool {
    info.group == "certificates.k8s.io" && info.kind == "CertificateSigningRequest"
}

fn signer_of(csr: &Value) -> &str {
    csr.pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether `user` may `verb` (`approve`, `sign`) for `signer` or its `<domain>/*`.
pub(crate) async fn authorized_for_signer(
    state: &AppState,
    user: &UserInfo,
    verb: &str,
    signer: &str,
) -> bool {
    let mut names = vec![signer.to_string()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    for name in names {
        let attrs = crate::auth::Attributes::resource(
            user.clone(),
            verb,
            "certificates.k8s.io",
            "signers",
            "",
            "",
            &name,
        );
        if crate::auth::authorize(state, &attrs).await {
            return true;
        }
    }
    false
}

/// CertificateApproval, on the stored CSR an `/approval` write replaces.
pub(crate) async fn admit_approval(
    state: &AppState,
    info: &ResourceInfo,
    user: &UserInfo,
    old: &Value,
) -> Result<(), ApiError> {
    let signer = signer_of(old);
    if authorized_for_signer(state, user, "approve", signer).await {
        return Ok(());
    }
    Err(ApiError::forbidden(
        info,
        object_meta_str(old, "name"),
        &format!("user not permitted to approve requests with signerName {signer:?}"),
    ))
}

/// CertificateSigning, on a `/status` write of `old` to `new`.
pub(crate) async fn admit_signing(
    state: &AppState,
    info: &ResourceInfo,
    user: &UserInfo,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let part = |v: &Value, field: &str| v.pointer(&format!("/status/{field}")).cloned();
    if part(old, "certificate") == part(new, "certificate")
        && part(old, "conditions") == part(new, "conditions")
    {
        return Ok(());
    }
    let signer = signer_of(old);
    if authorized_for_signer(state, user, "sign", signer).await {
        return Ok(());
    }
    Err(ApiError::forbidden(
        info,
        object_meta_str(old, "name"),
        &format!("user not permitted to sign requests with signerName {signer:?}"),
    ))
}

/// CertificateSubjectRestriction, on a new CSR.
pub(crate) fn admit_subject(info: &ResourceInfo, csr: &Value) -> Result<(), ApiError> {
    if !is_csr(info) || signer_of(csr) != KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    let name = match object_meta_str(csr, "name") {
        "" => object_meta_str(csr, "generateName"),
        n => n,
    };
    let forbidden = |why: String| ApiError::forbidden(info, name, &why);
    let organizations =
        request_organizations(csr).map_err(|e| forbidden(format!("failed to parse CSR: {e}")))?;
    if organizations.iter().any(|o| o == "system:masters") {
        return Err(forbidden(format!(
            "use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed"
        )));
    }
    Ok(())
}

/// Runs `f` on the PKCS#10 request of a CSR's base64 `spec.request`, read as upstream's
/// `ParseCSR` reads it: the first PEM block must be a `CERTIFICATE REQUEST`.
pub(crate) fn with_request<T>(
    encoded: &str,
    f: impl FnOnce(&X509CertificationRequest<'_>) -> Result<T, String>,
) -> Result<T, String> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| e.to_string())?;
    let block = x509_parser::pem::parse_x509_pem(&pem)
        .ok()
        .map(|(_, p)| p)
        .filter(|p| p.label == "CERTIFICATE REQUEST")
        .ok_or("PEM block type must be CERTIFICATE REQUEST")?;
    let (_, request) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("x509: malformed certificate request: {e}"))?;
    f(&request)
}

/// The subject organizations (groups) of the PKCS#10 request in `spec.request`.
fn request_organizations(csr: &Value) -> Result<Vec<String>, String> {
    let encoded = csr
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .unwrap_or_default();
    with_request(encoded, |request| {
        Ok(request
            .certification_request_info
            .subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_string)
            .collect())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;
    use serde_json::json;

    fn csr(signer: &str, groups: &[&str]) -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        for g in groups {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *g);
        }
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        json!({
            "metadata": {"name": "c"},
            "spec": {
                "signerName": signer,
                "request": base64::engine::general_purpose::STANDARD.encode(pem),
            },
        })
    }

    #[test]
    fn masters_client_certificates_are_refused() {
        let info = REGISTRY
            .find("certificates.k8s.io", "v1", "certificatesigningrequests")
            .unwrap();
        let e = admit_subject(info, &csr(KUBE_APISERVER_CLIENT, &["system:masters"])).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "certificatesigningrequests.certificates.k8s.io \"c\" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
        );
        admit_subject(info, &csr(KUBE_APISERVER_CLIENT, &["dev"])).unwrap();
        admit_subject(info, &csr("example.com/x", &["system:masters"])).unwrap();
        let mut bad = csr(KUBE_APISERVER_CLIENT, &[]);
        bad["spec"]["request"] = json!(base64::engine::general_purpose::STANDARD.encode("junk"));
        assert_eq!(
            admit_subject(info, &bad).unwrap_err().message,
            "certificatesigningrequests.certificates.k8s.io \"c\" is forbidden: failed to parse CSR: PEM block type must be CERTIFICATE REQUEST"
        );
    }
}
