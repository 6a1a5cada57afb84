//! `use-service-account-credentials`: every loop works through its own service account
//! (`kube-system/<account>`, upstream's `system:controller:<account>` role), the manager's own
//! identity (`system:kube-controller-manager`, no union role) cannot do the loops' work, and a
//! loop's account is refused what its role does not allow, with upstream's 403.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::{TestCluster, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            }
        }
    }))
    .unwrap()
}

fn replica_set(name: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            }
        }
    }))
    .unwrap()
}

/// A client of `token` (bearer, no client certificate) against the test cluster.
async fn bearer_client(t: &TestCluster, token: &str) -> kube::Client {
    let ca = t.dir.path().join("bearer-ca.crt");
    std::fs::write(&ca, t.apiserver.ca_pem()).unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
         certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
        t.apiserver.url(),
        ca.display()
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn forbidden(r: Result<impl std::fmt::Debug, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            assert_eq!(s.reason, "Forbidden");
            s.message
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn a_deployment_rolls_out_through_the_controllers_own_accounts() {
    let t = TestCluster::start().await;
    // No union role: the manager's identity has upstream's system:kube-controller-manager
    // role only.
    let crbs: Api<ClusterRoleBinding> = Api::all(t.client.clone());
    assert!(
        crbs.get_opt("rk3s:kube-controller-manager")
            .await
            .unwrap()
            .is_none()
    );
    let manager = common::manager_connection(&t.apiserver).await;
    let as_manager: Api<ReplicaSet> = Api::namespaced(manager.client().clone(), "default");
    let message = forbidden(
        as_manager
            .create(&PostParams::default(), &replica_set("by-manager"))
            .await,
    );
    assert_eq!(
        message,
        "replicasets.apps is forbidden: User \"system:kube-controller-manager\" cannot create \
         resource \"replicasets\" in API group \"apps\" in the namespace \"default\""
    );
    let pods_as_manager: Api<Pod> = Api::namespaced(manager.client().clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "by-manager"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    forbidden(pods_as_manager.create(&PostParams::default(), &pod).await);

    // The deployment controller's account may create ReplicaSets (a dry run says so).
    let deployer = common::client_as(
        &t.kubeconfig,
        "system:serviceaccount:kube-system:deployment-controller",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ],
    )
    .await;
    Api::<ReplicaSet>::namespaced(deployer, "default")
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &replica_set("by-deployer"),
        )
        .await
        .unwrap();

    // The rollout: Deployment → ReplicaSet → pods → available, all through the loops' own
    // service accounts (which the manager created).
    let deps: Api<Deployment> = Api::namespaced(t.client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    eventually(60, "web available", || async {
        let d = deps.get("web").await.ok()?;
        (d.status?.available_replicas? == 2).then_some(())
    })
    .await;
    let rss: Api<ReplicaSet> = Api::namespaced(t.client.clone(), "default");
    assert_eq!(
        rss.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let sas: Api<ServiceAccount> = Api::namespaced(t.client.clone(), "kube-system");
    for sa in ["deployment-controller", "replicaset-controller"] {
        assert!(sas.get_opt(sa).await.unwrap().is_some(), "{sa}");
    }
}

#[tokio::test]
async fn a_loops_token_is_refused_outside_its_role() {
    let t = TestCluster::start().await;
    let sas: Api<ServiceAccount> = Api::namespaced(t.client.clone(), "kube-system");
    // The manager creates the account when the loop starts.
    eventually(30, "the deployment controller's account", || async {
        sas.get_opt("deployment-controller").await.unwrap()
    })
    .await;
    let token = sas
        .create_token_request(
            "deployment-controller",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let client = bearer_client(&t, &token).await;
    // Inside its role: Deployments.
    Api::<Deployment>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    // Outside: Secrets.
    let message = forbidden(
        Api::<Secret>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(
        message,
        "secrets is forbidden: User \"system:serviceaccount:kube-system:deployment-controller\" \
         cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
    );
    let message = forbidden(
        Api::<Pod>::namespaced(client, "default")
            .delete("any", &Default::default())
            .await,
    );
    assert_eq!(
        message,
        "pods \"any\" is forbidden: User \"system:serviceaccount:kube-system:deployment-controller\" \
         cannot delete resource \"pods\" in API group \"\" in the namespace \"default\""
    );
}

#[tokio::test]
async fn the_union_role_exists_only_while_configured_and_a_leftover_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let start = |union: bool| {
        rk3s_apiserver::EmbeddedApiserver::builder()
            .data_dir(dir.path())
            .auth(rk3s_apiserver::AuthConfig {
                controller_manager_union_role: union,
                ..rk3s_apiserver::AuthConfig::default()
            })
            .start()
    };
    let union = |client: kube::Client| async move {
        let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
        let crs: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client);
        (
            crbs.get_opt("rk3s:kube-controller-manager")
                .await
                .unwrap()
                .is_some(),
            crs.get_opt("rk3s:kube-controller-manager")
                .await
                .unwrap()
                .is_some(),
        )
    };
    // A standalone apiserver's default: the union role and binding, for an rk3s-controller
    // without per-loop credentials.
    let api = start(true).await.unwrap();
    assert_eq!(union(api.client().await.unwrap()).await, (true, true));
    api.shutdown().await;
    // Off (what `rk3s server` sets) on the same store: the leftovers are deleted; the
    // per-controller roles stay.
    let api = start(false).await.unwrap();
    let client = api.client().await.unwrap();
    assert_eq!(union(client.clone()).await, (false, false));
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    // Upstream's namespaced Role of the token cleaner, and its binding.
    let roles: Api<k8s_openapi::api::rbac::v1::Role> =
        Api::namespaced(client.clone(), "kube-system");
    let role_bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(client, "kube-system");
    let role = roles.get("system:controller:token-cleaner").await.unwrap();
    let rule = &role.rules.unwrap()[0];
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["secrets".to_string()][..])
    );
    let binding = role_bindings
        .get("system:controller:token-cleaner")
        .await
        .unwrap();
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "token-cleaner", Some("kube-system"))
    );
    for name in [
        "system:controller:deployment-controller",
        "rk3s:controller:deployment-controller",
        "system:kube-controller-manager",
    ] {
        assert!(crbs.get_opt(name).await.unwrap().is_some(), "{name}");
    }
    api.shutdown().await;
}
