//! CSR approving and signing: a kubelet's client certificate request is approved after a
//! SubjectAccessReview and signed by the cluster's client CA.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, client_as, eventually};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, PostParams};
use serde_json::json;
use x509_parser::prelude::*;

fn request_pem(cn: &str, org: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    dn.push(rcgen::DnType::OrganizationName, org);
    params.distinguished_name = dn;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr(name: &str, pem: &str, signer: &str, usages: &[&str]) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.as_bytes().to_vec()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        status: None,
    }
}

fn condition(c: &CertificateSigningRequest, ty: &str) -> Option<(String, String)> {
    c.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|x| x.type_ == ty)
        .map(|x| {
            (
                x.reason.clone().unwrap_or_default(),
                x.message.clone().unwrap_or_default(),
            )
        })
}

async fn signed(api: &Api<CertificateSigningRequest>, name: &str) -> Vec<u8> {
    eventually(30, "certificate issued", || async {
        let c = api.get(name).await.ok()?;
        c.status?.certificate.map(|b| b.0).filter(|b| !b.is_empty())
    })
    .await
}

const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const CLIENT_USAGES: &[&str] = &["digital signature", "client auth"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_client_csr_is_approved_and_signed_by_the_client_ca() {
    let t = TestCluster::start_configured(|dir| {
        let mut c = rk3s_controller::Config::default();
        c.nodes.cluster_signing_cert_file = Some(dir.join("tls/client-ca.crt"));
        c.nodes.cluster_signing_key_file = Some(dir.join("tls/client-ca.key"));
        c
    })
    .await;
    // As kubeadm does: nodes may have their own client certificates approved.
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "auto-approve-renewals-for-nodes"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
            "name": "system:nodes"}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(t.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The node asks for its own certificate; the apiserver records who asked.
    let node = client_as(&t.kubeconfig, "system:node:n1", &["system:nodes"]).await;
    let as_node: Api<CertificateSigningRequest> = Api::all(node);
    let created = as_node
        .create(
            &PostParams::default(),
            &csr(
                "node-csr-n1",
                &request_pem("system:node:n1", "system:nodes"),
                KUBELET_CLIENT,
                CLIENT_USAGES,
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.username.as_deref(), Some("system:node:n1"));
    assert!(
        created
            .spec
            .groups
            .unwrap()
            .contains(&"system:nodes".to_string())
    );

    let api: Api<CertificateSigningRequest> = Api::all(t.client.clone());
    let pem = signed(&api, "node-csr-n1").await;
    let c = api.get("node-csr-n1").await.unwrap();
    assert_eq!(
        condition(&c, "Approved").unwrap(),
        (
            "AutoApproved".into(),
            "Auto approving self kubelet client certificate after SubjectAccessReview.".into()
        )
    );

    // The certificate: issued by the client CA, for the requested subject and usages, for
    // the requested hour (backdated 5 minutes, as upstream does).
    let ca_pem = std::fs::read(t.dir.path().join("tls/client-ca.crt")).unwrap();
    let (_, ca_block) = parse_x509_pem(&ca_pem).unwrap();
    let ca = ca_block.parse_x509().unwrap();
    let (_, block) = parse_x509_pem(&pem).unwrap();
    let cert = block.parse_x509().unwrap();
    cert.verify_signature(Some(ca.public_key()))
        .expect("signed by the client CA");
    assert_eq!(cert.issuer(), ca.subject());
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    let o: Vec<&str> = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["system:node:n1"]);
    assert_eq!(o, ["system:nodes"]);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
    assert!(!cert.is_ca());
    let v = cert.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        3600 + 300
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_permission_a_csr_waits_for_a_person_and_bad_requests_fail() {
    let t = TestCluster::start_configured(|dir| {
        let mut c = rk3s_controller::Config::default();
        c.nodes.cluster_signing_cert_file = Some(dir.join("tls/client-ca.crt"));
        c.nodes.cluster_signing_key_file = Some(dir.join("tls/client-ca.key"));
        c
    })
    .await;
    let api: Api<CertificateSigningRequest> = Api::all(t.client.clone());
    // No binding grants selfnodeclient/nodeclient: the approver leaves it pending.
    let node = client_as(&t.kubeconfig, "system:node:n2", &["system:nodes"]).await;
    Api::<CertificateSigningRequest>::all(node)
        .create(
            &PostParams::default(),
            &csr(
                "pending",
                &request_pem("system:node:n2", "system:nodes"),
                KUBELET_CLIENT,
                CLIENT_USAGES,
            ),
        )
        .await
        .unwrap();
    // A serving CSR without SANs, approved by hand, breaks its signer's rules.
    api.create(
        &PostParams::default(),
        &csr(
            "bad-serving",
            &request_pem("system:node:n2", "system:nodes"),
            "kubernetes.io/kubelet-serving",
            &["digital signature", "server auth"],
        ),
    )
    .await
    .unwrap();
    t.kubectl_ok(&["certificate", "approve", "bad-serving"])
        .await;
    let failed = eventually(30, "serving CSR failed", || async {
        condition(&api.get("bad-serving").await.ok()?, "Failed")
    })
    .await;
    assert_eq!(
        failed,
        (
            "SignerValidationFailure".into(),
            "DNS or IP subjectAltName is required".into()
        )
    );
    let c = api.get("pending").await.unwrap();
    assert!(condition(&c, "Approved").is_none(), "{:?}", c.status);
    assert!(c.status.and_then(|s| s.certificate).is_none());

    // Approving needs `approve` on the signer (upstream's CertificateApproval admission):
    // bob may update `/approval` but holds no signer.
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "csr-editor"},
        "rules": [{"apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests", "certificatesigningrequests/approval"],
            "verbs": ["get", "list", "update", "patch"]}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(t.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "bob-csr-editor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "csr-editor"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(t.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let denied = eventually(30, "bob refused by the signer check", || async {
        let out = t
            .kubectl(&["--as", "bob", "certificate", "approve", "pending"])
            .await;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("signerName")).then_some(err)
    })
    .await;
    assert!(
        denied.contains(
            "user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client-kubelet\""
        ),
        "{denied}"
    );
    assert!(condition(&api.get("pending").await.unwrap(), "Approved").is_none());

    // A person approves it (the approval subresource, as kubectl uses it): then it is signed.
    let out = t.kubectl_ok(&["certificate", "approve", "pending"]).await;
    assert!(out.contains("approved"), "{out}");
    let pem = signed(&api, "pending").await;
    let (_, block) = parse_x509_pem(&pem).unwrap();
    let cert = block.parse_x509().unwrap();
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["system:node:n2"]);
    let c = api.get("pending").await.unwrap();
    assert_eq!(condition(&c, "Approved").unwrap().0, "KubectlApprove");
}
