//! Encryption at rest: Secrets written through the API are not in clear text in the SQLite
//! file, read back through every path, survive key rotation, and an unreadable value is a
//! 500 `InternalError`, as upstream.

mod common;

use std::collections::BTreeMap;

use common::TestServer;
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use rk3s_apiserver::{EncryptionConfiguration, Transformer};

const K1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbyAhISE=";
const K2: &str = "dGhpcyBpcyBhbm90aGVyIDMyIGJ5dGUga2V5ICEhISE=";
const VALUE: &str = "s3cr3t-value-xyz";
const VALUE_B64: &str = "czNjcjN0LXZhbHVlLXh5eg==";
const CM_VALUE: &str = "plain-configmap-value-123";

/// `secrets` with the given aescbc keys (first encrypts), then identity.
fn config(keys: &[(&str, &str)], identity: bool) -> Transformer {
    let keys: Vec<String> = keys
        .iter()
        .map(|(n, s)| format!("{{name: {n}, secret: {s}}}"))
        .collect();
    let mut providers = String::new();
    if !keys.is_empty() {
        providers.push_str(&format!("  - aescbc: {{keys: [{}]}}\n", keys.join(", ")));
    }
    if identity {
        providers.push_str("  - identity: {}\n");
    }
    let yaml = format!(
        "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
    );
    let c: EncryptionConfiguration = serde_yaml::from_str(&yaml).expect("yaml");
    Transformer::new(&c).expect("valid configuration")
}

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(VALUE.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The bytes of the SQLite database and its WAL.
fn db_bytes(t: &TestServer) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        if let Ok(b) = std::fs::read(t.dir.path().join(f)) {
            all.extend(b);
        }
    }
    assert!(!all.is_empty(), "the SQLite file exists");
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The raw stored value of a key.
async fn raw(t: &TestServer, key: &str) -> Vec<u8> {
    t.store
        .get(key.as_bytes(), 0)
        .await
        .expect("datastore read")
        .1
        .expect("key exists")
        .value
}

fn password(s: &Secret) -> String {
    String::from_utf8(s.data.as_ref().expect("data")["password"].0.clone()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_in_the_sqlite_file_and_read_back() {
    let t = TestServer::start_configured(|a| a.encryption(config(&[("k1", K1)], true))).await;
    let client = t.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // A watch started before the write sees the decrypted object.
    let mut watch = secrets
        .watch(&WatchParams::default().timeout(20), "0")
        .await
        .expect("watch starts")
        .boxed();
    secrets
        .create(&PostParams::default(), &secret("s1"))
        .await
        .expect("secret created");
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("c1".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("k".to_string(), CM_VALUE.to_string())])),
            ..ConfigMap::default()
        },
    )
    .await
    .expect("configmap created");

    // Upstream's stored form.
    let stored = raw(&t, "/registry/secrets/default/s1").await;
    assert!(
        stored.starts_with(b"k8s:enc:aescbc:v1:k1:"),
        "{:?}",
        String::from_utf8_lossy(&stored[..stored.len().min(40)])
    );
    let body = &stored["k8s:enc:aescbc:v1:k1:".len()..];
    assert_eq!(body.len() % 16, 0, "IV + whole AES blocks");
    // Not in the file, neither raw nor base64; the configmap (not configured) is, which shows
    // the check can see values.
    let db = db_bytes(&t);
    assert!(
        !contains(&db, VALUE_B64),
        "secret data in clear in the SQLite file"
    );
    assert!(!contains(&db, VALUE));
    assert!(contains(&db, CM_VALUE), "configmaps are not encrypted here");

    // get, list, watch.
    assert_eq!(password(&secrets.get("s1").await.expect("get")), VALUE);
    let list = secrets.list(&ListParams::default()).await.expect("list");
    let s1 = list
        .items
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("s1"))
        .expect("listed");
    assert_eq!(password(s1), VALUE);
    let mut seen = false;
    while let Some(ev) = watch.next().await {
        if let WatchEvent::Added(s) = ev.expect("watch event")
            && s.metadata.name.as_deref() == Some("s1")
        {
            assert_eq!(password(&s), VALUE);
            seen = true;
            break;
        }
    }
    assert!(seen, "the watch delivered the secret");

    // patch, then read: still encrypted, new value readable.
    let patched = secrets
        .patch(
            "s1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .expect("patched");
    assert_eq!(password(&patched), VALUE);
    assert!(
        raw(&t, "/registry/secrets/default/s1")
            .await
            .starts_with(b"k8s:enc:aescbc:v1:k1:")
    );

    // kubectl sees it too (server-side apply path: kubectl apply --server-side).
    let out = t
        .kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s2, namespace: default}\nstringData: {password: applied-value}\n",
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        raw(&t, "/registry/secrets/default/s2")
            .await
            .starts_with(b"k8s:enc:aescbc:v1:k1:")
    );
    let got = t
        .kubectl_ok(&["get", "secret", "s2", "-o", "jsonpath={.data.password}"])
        .await;
    assert_eq!(got, "YXBwbGllZC12YWx1ZQ==");

    // delete works on an encrypted object.
    secrets
        .delete("s2", &Default::default())
        .await
        .expect("deleted");
    assert!(
        t.store
            .get(b"/registry/secrets/default/s2", 0)
            .await
            .expect("read")
            .1
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_key_is_an_internal_error_not_garbage() {
    let t = TestServer::start_configured(|a| a.encryption(config(&[("k1", K1)], true))).await;
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "default");
    secrets
        .create(&PostParams::default(), &secret("s1"))
        .await
        .expect("secret created");

    // Without the key: upstream's identity-transformer error, 500 InternalError.
    let t = t.restart(|a| a.encryption(config(&[], true))).await;
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "default");
    let err = secrets.get("s1").await.expect_err("cannot be read");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err:?}")
    };
    assert_eq!(status.code, 500);
    assert_eq!(status.reason, "InternalError");
    assert_eq!(
        status.message,
        "Internal error occurred: identity transformer tried to read encrypted data"
    );
    // A list names the key, as upstream.
    let err = secrets
        .list(&ListParams::default())
        .await
        .expect_err("cannot be listed");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err:?}")
    };
    assert_eq!(status.code, 500);
    assert_eq!(
        status.message,
        "Internal error occurred: unable to transform key \"/registry/secrets/default/s1\": identity transformer tried to read encrypted data"
    );
    // Without encryption configured at all: the same.
    let t = t.restart(|a| a).await;
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "default");
    let kube::Error::Api(status) = secrets.get("s1").await.expect_err("unreadable") else {
        panic!("not an API error")
    };
    assert_eq!(status.code, 500);

    // The same key name with another secret: a decryption error, never the wrong bytes.
    let t = t
        .restart(|a| a.encryption(config(&[("k1", K2)], false)))
        .await;
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "default");
    let kube::Error::Api(status) = secrets.get("s1").await.expect_err("unreadable") else {
        panic!("not an API error")
    };
    assert_eq!(status.code, 500, "{status:?}");
    assert_eq!(status.reason, "InternalError");
    assert!(
        status.message == "Internal error occurred: invalid padding on input"
            || status.message
                == "Internal error occurred: invalid PKCS7 data (empty or not padded)",
        "{}",
        status.message
    );

    // Other resources are unaffected.
    let cms: Api<ConfigMap> = Api::namespaced(t.client().await, "kube-system");
    cms.list(&ListParams::default())
        .await
        .expect("configmaps still list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reencrypts_existing_secrets_with_the_new_key() {
    // Before encryption: a plain secret.
    let t = TestServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "default");
    secrets
        .create(&PostParams::default(), &secret("plain"))
        .await
        .expect("created");
    assert!(
        raw(&t, "/registry/secrets/default/plain")
            .await
            .starts_with(b"{")
    );

    // Encryption on (K3s' shape: aescbc then identity): new writes are encrypted, the old one
    // still reads.
    let t = t
        .restart(|a| a.encryption(config(&[("k1", K1)], true)))
        .await;
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "default");
    secrets
        .create(&PostParams::default(), &secret("enc"))
        .await
        .expect("created");
    assert_eq!(password(&secrets.get("plain").await.expect("get")), VALUE);
    assert!(
        raw(&t, "/registry/secrets/default/enc")
            .await
            .starts_with(b"k8s:enc:aescbc:v1:k1:")
    );

    // An unchanged update of a stale object is written (upstream: how `kubectl replace`
    // re-encrypts).
    let current = secrets.get("plain").await.expect("get");
    secrets
        .replace("plain", &PostParams::default(), &current)
        .await
        .expect("replaced");
    assert!(
        raw(&t, "/registry/secrets/default/plain")
            .await
            .starts_with(b"k8s:enc:aescbc:v1:k1:")
    );
    // ... while an unchanged update of a current one is not (no new revision).
    let current = secrets.get("plain").await.expect("get");
    let again = secrets
        .replace("plain", &PostParams::default(), &current)
        .await
        .expect("replaced");
    assert_eq!(
        again.metadata.resource_version,
        current.metadata.resource_version
    );

    // Rotation: k2 first, k1 still readable; re-encrypt everything through the store (with
    // the server running: each rewrite is a compare-and-swap).
    let t = t
        .restart(|a| a.encryption(config(&[("k2", K2), ("k1", K1)], true)))
        .await;
    let done = rk3s_apiserver::reencrypt(&t.store, &config(&[("k2", K2), ("k1", K1)], true))
        .await
        .expect("re-encrypted");
    assert!(done.rewritten >= 2, "{done:?}");
    for name in ["plain", "enc"] {
        let v = raw(&t, &format!("/registry/secrets/default/{name}")).await;
        assert!(
            v.starts_with(b"k8s:enc:aescbc:v1:k2:"),
            "{name}: {:?}",
            String::from_utf8_lossy(&v[..v.len().min(30)])
        );
    }
    // Nothing left to do.
    let again = rk3s_apiserver::reencrypt(&t.store, &config(&[("k2", K2), ("k1", K1)], true))
        .await
        .expect("re-encrypted");
    assert_eq!(again.rewritten, 0);

    // The old key dropped: everything still reads.
    let t = t
        .restart(|a| a.encryption(config(&[("k2", K2)], false)))
        .await;
    let secrets: Api<Secret> = Api::namespaced(t.client().await, "default");
    for name in ["plain", "enc"] {
        assert_eq!(password(&secrets.get(name).await.expect("get")), VALUE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_encrypted_with_aesgcm_still_serves() {
    // `*.*`: namespaces, RBAC objects, Services (and their allocation transactions), CRDs...
    // every cache and controller reads through the transformer.
    let c: EncryptionConfiguration = serde_yaml::from_str(&format!(
        "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [configmaps]\n  providers:\n  - aesgcm: {{keys: [{{name: g1, secret: {K1}}}]}}\n- resources: ['*.*']\n  providers:\n  - aescbc: {{keys: [{{name: all, secret: {K2}}}]}}\n"
    ))
    .expect("yaml");
    let t =
        TestServer::start_configured(|a| a.encryption(Transformer::new(&c).expect("valid"))).await;
    for (key, prefix) in [
        ("/registry/namespaces/default", "k8s:enc:aescbc:v1:all:"),
        (
            "/registry/clusterroles/cluster-admin",
            "k8s:enc:aescbc:v1:all:",
        ),
        (
            "/registry/services/specs/default/kubernetes",
            "k8s:enc:aescbc:v1:all:",
        ),
    ] {
        let v = raw(&t, key).await;
        assert!(v.starts_with(prefix.as_bytes()), "{key}");
    }
    t.kubectl_ok(&["create", "configmap", "cm", "--from-literal=k=v"])
        .await;
    assert!(
        raw(&t, "/registry/configmaps/default/cm")
            .await
            .starts_with(b"k8s:enc:aesgcm:v1:g1:")
    );
    t.kubectl_ok(&["create", "deployment", "web", "--image=busybox"])
        .await;
    t.kubectl_ok(&["expose", "deployment", "web", "--port=80"])
        .await;
    let names = t.kubectl_ok(&["get", "cm,deploy,svc", "-o", "name"]).await;
    for n in ["configmap/cm", "deployment.apps/web", "service/web"] {
        assert!(names.contains(n), "{names}");
    }
    // RBAC from encrypted bindings: a view user reads, cannot write.
    t.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: v}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: val}\n",
    )
    .await;
    let val = t.user_kubeconfig("val", &[]);
    let mut allowed = false;
    for _ in 0..100 {
        if t.kubectl_as(&val, &["get", "cm", "cm"])
            .await
            .status
            .success()
        {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(allowed, "the view binding took effect");
    assert!(
        !t.kubectl_as(&val, &["delete", "cm", "cm"])
            .await
            .status
            .success()
    );
}
