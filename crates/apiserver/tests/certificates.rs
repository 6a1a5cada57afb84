//! The certificates admission plugins on CertificateSigningRequests: CertificateApproval
//! (`approve` on `signers` to write `/approval`), CertificateSigning (`sign` on `signers` to
//! write `status.certificate` or conditions through `/status`), CertificateSubjectRestriction
//! (no `system:masters` client certificates from the apiserver-client signer).

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::TestServer;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const CLIENT: &str = "kubernetes.io/kube-apiserver-client";

fn request_pem(cn: &str, orgs: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    for o in orgs {
        dn.push(rcgen::DnType::OrganizationName, *o);
    }
    params.distinguished_name = dn;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr(name: &str, pem: &str) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.as_bytes().to_vec()),
            signer_name: CLIENT.into(),
            usages: Some(vec!["client auth".into()]),
            ..Default::default()
        },
        status: None,
    }
}

/// Grants `user` the rules of a new ClusterRole `name`.
async fn grant(t: &TestServer, name: &str, user: &str, rules: serde_json::Value) {
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": rules});
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &role.to_string())
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        name,
        &format!("--clusterrole={name}"),
        &format!("--user={user}"),
    ])
    .await;
}

/// Retries `attempt` until it stops being refused with 403 (RBAC follows its watch), a
/// bounded number of times; returns the last result.
async fn until_allowed<F, Fut, T>(mut attempt: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut last = attempt().await;
    for _ in 0..200 {
        match &last {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            _ => return last,
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        last = attempt().await;
    }
    last
}

fn forbidden_message(r: Result<CertificateSigningRequest, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
            s.message
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn system_masters_client_certificates_cannot_be_requested() {
    let t = TestServer::start().await;
    let api: Api<CertificateSigningRequest> = Api::all(t.client().await);
    let err = api
        .create(
            &PostParams::default(),
            &csr("root", &request_pem("mallory", &["dev", "system:masters"])),
        )
        .await;
    assert_eq!(
        forbidden_message(err),
        "certificatesigningrequests.certificates.k8s.io \"root\" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
    );
    // Other groups, and system:masters from another signer, are fine.
    api.create(
        &PostParams::default(),
        &csr("dev", &request_pem("alice", &["dev"])),
    )
    .await
    .expect("created");
    let mut other = csr("elsewhere", &request_pem("alice", &["system:masters"]));
    other.spec.signer_name = "example.com/internal".into();
    api.create(&PostParams::default(), &other)
        .await
        .expect("created");
    // kubectl shows the refusal as upstream's.
    let out = t
        .kubectl_stdin(
            &["create", "-f", "-"],
            &serde_json::to_string(&csr("root2", &request_pem("m", &["system:masters"]))).unwrap(),
        )
        .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "certificatesigningrequests.certificates.k8s.io \"root2\" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
    ), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn approving_and_signing_need_the_signer_verbs() {
    let t = TestServer::start().await;
    let admin: Api<CertificateSigningRequest> = Api::all(t.client().await);
    admin
        .create(
            &PostParams::default(),
            &csr("alice", &request_pem("alice", &["dev"])),
        )
        .await
        .expect("created");
    // May write the subresources, but holds neither `approve` nor `sign` yet.
    let csrs = "certificatesigningrequests";
    grant(
        &t,
        "csr-writer",
        "carol",
        json!([{"apiGroups": ["certificates.k8s.io"],
            "resources": [csrs, format!("{csrs}/approval"), format!("{csrs}/status")],
            "verbs": ["get", "list", "update", "patch"]}]),
    )
    .await;
    let carol: Api<CertificateSigningRequest> =
        Api::all(t.client_from(&t.user_kubeconfig("carol", &[])).await);
    let approve = Patch::Merge(json!({"status": {"conditions": [{"type": "Approved",
        "status": "True", "reason": "Manual", "message": "ok"}]}}));
    let pp = PatchParams::default();
    let refused =
        until_allowed(|| carol.patch_subresource("approval", "alice", &pp, &approve)).await;
    assert_eq!(
        forbidden_message(refused),
        "certificatesigningrequests.certificates.k8s.io \"alice\" is forbidden: user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""
    );
    // A status write that changes neither the certificate nor the conditions needs nothing.
    carol
        .patch_status(
            "alice",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {}})),
        )
        .await
        .expect("an unchanged status is written");

    // `approve` on the signer's domain wildcard is enough.
    grant(
        &t,
        "approver",
        "carol",
        json!([{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
            "resourceNames": ["kubernetes.io/*"], "verbs": ["approve"]}]),
    )
    .await;
    let approved = until_allowed(|| carol.patch_subresource("approval", "alice", &pp, &approve))
        .await
        .expect("approved");
    let conditions = approved.status.unwrap().conditions.unwrap();
    assert_eq!(conditions[0].type_, "Approved");

    // Issuing the certificate needs `sign` on exactly this signer (or its wildcard).
    let cert = {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["alice".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    };
    use base64::Engine as _;
    let issue = Patch::Merge(json!({"status": {"certificate":
        base64::engine::general_purpose::STANDARD.encode(&cert)}}));
    let refused = carol.patch_status("alice", &pp, &issue).await;
    assert_eq!(
        forbidden_message(refused),
        "certificatesigningrequests.certificates.k8s.io \"alice\" is forbidden: user not permitted to sign requests with signerName \"kubernetes.io/kube-apiserver-client\""
    );
    grant(
        &t,
        "signer",
        "carol",
        json!([{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
            "resourceNames": [CLIENT], "verbs": ["sign"]}]),
    )
    .await;
    let signed = until_allowed(|| carol.patch_status("alice", &pp, &issue))
        .await
        .expect("signed");
    assert_eq!(
        signed.status.unwrap().certificate.unwrap().0,
        cert.as_bytes()
    );
}

/// `ValidateCertificateSigningRequestCreate`: a request that is not a signed PKCS#10 PEM
/// block, unknown or repeated usages, a bad signer name and a too short duration are 422
/// before any admission plugin looks at the request.
#[tokio::test]
async fn malformed_requests_are_invalid() {
    let t = TestServer::start().await;
    let api: Api<CertificateSigningRequest> = Api::all(t.client().await);
    let mut bad = csr("bad", "not a PEM block");
    bad.spec.signer_name = "signer".into();
    bad.spec.usages = Some(vec![
        "client auth".into(),
        "teleport".into(),
        "client auth".into(),
    ]);
    bad.spec.expiration_seconds = Some(60);
    let err = match api.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected 422, got {other:?}"),
    };
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "{err:?}");
    let causes: Vec<(String, String)> = err
        .details
        .map(|d| d.causes)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.field, c.reason))
        .collect();
    let expect = |f: &str, r: &str| (f.to_string(), r.to_string());
    assert_eq!(
        causes,
        [
            expect("spec.request", "FieldValueInvalid"),
            expect("spec.usages[1]", "FieldValueNotSupported"),
            expect("spec.usages[2]", "FieldValueDuplicate"),
            expect("spec.signerName", "FieldValueInvalid"),
            expect("spec.expirationSeconds", "FieldValueInvalid"),
        ]
    );
    // A request whose signature does not match its content is refused too.
    let pem = request_pem("alice", &["dev"]);
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, der_b64).unwrap();
    let last = der.len() - 1;
    der[last] ^= 0xff;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der)
    );
    let out = t
        .kubectl_stdin(
            &["create", "-f", "-"],
            &serde_json::to_string(&csr("tampered", &tampered)).unwrap(),
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "The CertificateSigningRequest \"tampered\" is invalid: spec.request: Invalid value: []byte{0x2d, 0x2d"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("signature"), "{stderr}");
}
