//! Legacy Secret-based ServiceAccount tokens end to end: the `serviceaccount-token`
//! controller fills token Secrets, a kube client logs in with the token, the apiserver
//! tracks its last use, and the token stops working once it is replaced, its Secret deleted
//! or its service account re-created (the controller deletes such Secrets, as upstream).
//! And the legacy token cleaner: unused auto-generated tokens are marked invalid, then
//! deleted, on a test clock.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::{Arc, Mutex};

use common::{TestCluster, eventually};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const LAST_USED: &str = "kubernetes.io/legacy-token-last-used";

fn token_secret(name: &str, sa: &str, ty: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": { "kubernetes.io/service-account.name": sa },
        },
        "type": ty,
    }))
    .unwrap()
}

fn service_account(name: &str) -> ServiceAccount {
    serde_json::from_value(json!({ "metadata": { "name": name, "namespace": "default" } })).unwrap()
}

/// The Secret's token, once the controller has filled it.
async fn filled_token(secrets: &Api<Secret>, name: &str) -> (Secret, String) {
    eventually(30, &format!("{name} filled"), || async {
        let s = secrets.get_opt(name).await.unwrap()?;
        let token = s.data.as_ref()?.get("token")?.0.clone();
        (!token.is_empty()).then(|| (s, String::from_utf8(token).unwrap()))
    })
    .await
}

/// Who a bearer token is, as the apiserver sees it (a SelfSubjectReview through a kube
/// client that logs in with the token); `None` when the token is refused (401).
async fn whoami(t: &TestCluster, token: &str) -> Option<String> {
    let mut config = kube::Config::new(t.apiserver.url().parse().unwrap());
    config.root_cert = Some(vec![rustls_pem_der(t.apiserver.ca_pem())]);
    config.auth_info.token = Some(token.to_string().into());
    let client = kube::Client::try_from(config).unwrap();
    let ssr: SelfSubjectReview = serde_json::from_value(
        json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview" }),
    )
    .unwrap();
    match Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &ssr)
        .await
    {
        Ok(r) => r.status?.user_info?.username,
        Err(kube::Error::Api(s)) if s.code == 401 => None,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The DER of the first certificate of a PEM bundle.
fn rustls_pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn today() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_token_secrets_are_filled_used_and_invalidated() {
    let t = TestCluster::start_configured(|dir| rk3s_controller::Config {
        controllers: vec!["serviceaccount-token".into()],
        service_account_private_key_file: Some(dir.join("tls").join("service.key")),
        root_ca_file: Some(dir.join("tls").join("server-ca.crt")),
        ..rk3s_controller::Config::default()
    })
    .await;
    let root_ca = std::fs::read(t.dir.path().join("tls").join("server-ca.crt")).unwrap();
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(t.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), "default");
    let robot = sas.create(&pp, &service_account("robot")).await.unwrap();
    let robot_uid = robot.metadata.uid.clone().unwrap();
    secrets
        .create(&pp, &token_secret("robot-token", "robot", TOKEN_TYPE))
        .await
        .unwrap();
    // Not a token Secret: left alone.
    secrets
        .create(&pp, &token_secret("robot-opaque", "robot", "Opaque"))
        .await
        .unwrap();

    // Filled: token, namespace, ca.crt and the uid annotation.
    let (filled, token) = filled_token(&secrets, "robot-token").await;
    let data = filled.data.clone().unwrap();
    assert_eq!(data["namespace"].0, b"default");
    assert_eq!(data["ca.crt"].0, root_ca);
    assert_eq!(
        filled.metadata.annotations.as_ref().unwrap()["kubernetes.io/service-account.uid"],
        robot_uid
    );

    // A client logs in with it, as the service account; the apiserver labels the Secret
    // with the day it was used.
    assert_eq!(
        whoami(&t, &token).await.as_deref(),
        Some("system:serviceaccount:default:robot")
    );
    let s = secrets.get("robot-token").await.unwrap();
    assert_eq!(
        s.metadata.labels.unwrap_or_default().get(LAST_USED),
        Some(&today())
    );
    let opaque = secrets.get("robot-opaque").await.unwrap();
    assert!(opaque.data.is_none(), "an Opaque secret is not filled");

    // Replaced: the old token is refused. Emptied: the controller signs a new one.
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "token": "cmVwbGFjZWQ=" } })),
        )
        .await
        .unwrap();
    assert_eq!(whoami(&t, &token).await, None, "replaced token");
    secrets
        .patch(
            "robot-token",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "token": null } })),
        )
        .await
        .unwrap();
    let (_, renewed) = eventually(30, "a new token", || async {
        let (s, tok) = filled_token(&secrets, "robot-token").await;
        (tok != "replaced").then_some((s, tok))
    })
    .await;
    assert_ne!(renewed, token);
    assert_eq!(
        whoami(&t, &renewed).await.as_deref(),
        Some("system:serviceaccount:default:robot")
    );

    // Deleted: refused.
    secrets
        .delete("robot-token", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(whoami(&t, &renewed).await, None, "deleted Secret");

    // A Secret naming a service account that does not exist is deleted.
    secrets
        .create(&pp, &token_secret("ghost-token", "ghost", TOKEN_TYPE))
        .await
        .unwrap();
    eventually(30, "ghost-token deleted", || async {
        secrets
            .get_opt("ghost-token")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // The service account re-created: its token Secret goes, its token is refused.
    secrets
        .create(&pp, &token_secret("robot-token2", "robot", TOKEN_TYPE))
        .await
        .unwrap();
    let (_, token2) = filled_token(&secrets, "robot-token2").await;
    assert!(whoami(&t, &token2).await.is_some());
    sas.delete("robot", &DeleteParams::default()).await.unwrap();
    let again = sas.create(&pp, &service_account("robot")).await.unwrap();
    assert_ne!(again.metadata.uid.as_deref(), Some(robot_uid.as_str()));
    assert_eq!(
        whoami(&t, &token2).await,
        None,
        "re-created service account"
    );
    eventually(30, "robot-token2 deleted", || async {
        secrets
            .get_opt("robot-token2")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // The new account's tokens work.
    secrets
        .create(&pp, &token_secret("robot-token3", "robot", TOKEN_TYPE))
        .await
        .unwrap();
    let (s3, token3) = filled_token(&secrets, "robot-token3").await;
    assert_eq!(
        s3.metadata.annotations.unwrap()["kubernetes.io/service-account.uid"],
        again.metadata.uid.unwrap()
    );
    assert_eq!(
        whoami(&t, &token3).await.as_deref(),
        Some("system:serviceaccount:default:robot")
    );
}

/// A clock that stands still until moved.
#[derive(Debug)]
struct TestClock(Mutex<Timestamp>);

impl rk3s_controller::Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

const INVALID_SINCE: &str = "kubernetes.io/legacy-token-invalid-since";

fn label_of(s: &Secret, key: &str) -> Option<String> {
    s.metadata.labels.as_ref()?.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_auto_generated_tokens_are_invalidated_then_deleted() {
    let start = Timestamp::now();
    let clock = Arc::new(TestClock(Mutex::new(start)));
    let t = TestCluster::start_configured_with_clock(
        |dir| rk3s_controller::Config {
            controllers: vec![
                "serviceaccount-token".into(),
                "legacy-serviceaccount-token-cleaner".into(),
            ],
            service_account_private_key_file: Some(dir.join("tls").join("service.key")),
            loops: rk3s_controller::LoopConfig {
                legacy_service_account_token_sync_period: 1,
                ..rk3s_controller::LoopConfig::default()
            },
            ..rk3s_controller::Config::default()
        },
        clock.clone(),
    )
    .await;
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(t.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), "default");
    // Auto-generated tokens are the ones their account lists in `secrets`.
    let listed = |name: &str, tokens: &[&str]| -> ServiceAccount {
        let refs: Vec<_> = tokens.iter().map(|t| json!({ "name": t })).collect();
        serde_json::from_value(json!({ "metadata": { "name": name }, "secrets": refs })).unwrap()
    };
    sas.create(&pp, &listed("auto", &["auto-token", "zz-auto-token"]))
        .await
        .unwrap();
    sas.create(&pp, &listed("manual", &[])).await.unwrap();
    sas.create(&pp, &listed("mounted", &["mounted-token"]))
        .await
        .unwrap();
    sas.create(&pp, &listed("used", &["used-token"]))
        .await
        .unwrap();
    for (secret, sa) in [
        ("auto-token", "auto"),
        ("zz-auto-token", "auto"),
        ("manual-token", "manual"),
        ("mounted-token", "mounted"),
        ("used-token", "used"),
    ] {
        secrets
            .create(&pp, &token_secret(secret, sa, TOKEN_TYPE))
            .await
            .unwrap();
    }
    let (_, auto_token) = filled_token(&secrets, "auto-token").await;
    assert!(whoami(&t, &auto_token).await.is_some());
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": { "name": "user", "namespace": "default" },
        "spec": {
            "serviceAccountName": "mounted",
            "containers": [{ "name": "c", "image": "busybox" }],
            "volumes": [{ "name": "t", "secret": { "secretName": "mounted-token" } }],
        },
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(t.client.clone(), "default")
        .create(&pp, &pod)
        .await
        .unwrap();

    // Past a year of tracking: the unused auto-generated tokens are marked invalid today;
    // a manual token, a mounted one and one used within the year are kept.
    let later = start
        .checked_add(SignedDuration::from_hours(24 * 400))
        .unwrap();
    let later_day = later.strftime("%Y-%m-%d").to_string();
    secrets
        .patch(
            "used-token",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { LAST_USED: later_day } } })),
        )
        .await
        .unwrap();
    *clock.0.lock().unwrap() = later;
    // A pass lists the Secrets in key order: once `zz-auto-token` is marked, every other
    // Secret of the namespace has been looked at in that pass.
    eventually(30, "zz-auto-token marked invalid", || async {
        let s = secrets.get("zz-auto-token").await.unwrap();
        label_of(&s, INVALID_SINCE).filter(|d| *d == later_day)
    })
    .await;
    let auto = secrets.get("auto-token").await.unwrap();
    assert_eq!(label_of(&auto, INVALID_SINCE), Some(later_day.clone()));
    for kept in ["manual-token", "mounted-token", "used-token"] {
        let s = secrets.get(kept).await.unwrap();
        assert_eq!(label_of(&s, INVALID_SINCE), None, "{kept}");
    }
    // The apiserver refuses a token marked invalid.
    assert_eq!(whoami(&t, &auto_token).await, None);

    // Invalid for a whole period more: deleted; the others stay.
    let much_later = later
        .checked_add(SignedDuration::from_hours(24 * 400))
        .unwrap();
    *clock.0.lock().unwrap() = much_later;
    eventually(30, "the invalid tokens deleted", || async {
        let gone = secrets.get_opt("auto-token").await.unwrap().is_none()
            && secrets.get_opt("zz-auto-token").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    for kept in ["manual-token", "mounted-token"] {
        assert!(secrets.get_opt(kept).await.unwrap().is_some(), "{kept}");
    }
}
