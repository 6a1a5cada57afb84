//! The tokens controller (upstream's `serviceaccount-token`, `pkg/controller/serviceaccount`
//! `TokensController`): legacy Secret-based ServiceAccount tokens.
//!
//! Every Secret of type `kubernetes.io/service-account-token` that names a service account in
//! its `kubernetes.io/service-account.name` annotation gets, when missing, `data.token` (a JWT
//! with upstream's legacy claims, issuer `kubernetes/serviceaccount`, signed with
//! `--service-account-private-key-file`), `data.namespace`, `data.ca.crt` (`--root-ca-file`,
//! replaced when it differs) and the `kubernetes.io/service-account.uid` annotation. A Secret
//! whose service account does not exist, or exists with another uid than the Secret's uid
//! annotation (the account was deleted and re-created), is deleted (uid precondition), as
//! upstream. ServiceAccount changes (deletion above all) requeue the Secrets that name the
//! account. Since v1.24 upstream creates no token Secrets by itself; neither does this loop.
//!
//! It runs with the manager's own credentials (as upstream: it needs `update`/`delete` on
//! secrets, which upstream's `system:kube-controller-manager` role grants) and only when the
//! signing key is configured. The key is read once, when the loop starts.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Resource as _;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::Serialize;
use sha2::Digest as _;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Backoff, Shared};

/// The Secret type this controller fills.
pub(crate) const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming the service account.
pub(crate) const NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The annotation holding the service account's uid.
pub(crate) const UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// The issuer of legacy tokens.
pub(crate) const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Signs legacy tokens.
pub(crate) struct Signer {
    key: EncodingKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Upstream's legacy claims (`serviceaccount.LegacyClaims`).
#[derive(Debug, Serialize)]
struct LegacyClaims<'a> {
    iss: &'a str,
    sub: String,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    namespace: &'a str,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    secret_name: &'a str,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    service_account_name: &'a str,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    service_account_uid: &'a str,
}

impl Signer {
    /// From a PEM ECDSA P-256 private key (PKCS#8 or SEC1), the apiserver's `service.key`.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, String> {
        let pair = rcgen::KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        if pair.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("not an ECDSA P-256 key (the only kind rk3s signs tokens with)".into());
        }
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        // As upstream (and the apiserver): the unpadded base64url SHA-256 of the public key's
        // DER, so that verifiers pick the key by `kid`.
        use rcgen::PublicKeyData as _;
        let key_id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(pair.subject_public_key_info()));
        Ok(Signer { key, key_id })
    }

    /// A legacy token for `secret` of service account `ns/name` (uid `uid`).
    pub(crate) fn token(
        &self,
        ns: &str,
        sa_name: &str,
        sa_uid: &str,
        secret: &str,
    ) -> Result<String, String> {
        let claims = LegacyClaims {
            iss: LEGACY_ISSUER,
            sub: format!("system:serviceaccount:{ns}:{sa_name}"),
            namespace: ns,
            secret_name: secret,
            service_account_name: sa_name,
            service_account_uid: sa_uid,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

struct Ctx {
    shared: Arc<Shared>,
    signer: Signer,
    root_ca: Option<Vec<u8>>,
    backoff: Backoff,
}

/// Runs the loop; returns at once (with an error logged) if the key or CA cannot be read.
pub(crate) async fn run(
    shared: Arc<Shared>,
    key_file: PathBuf,
    root_ca_file: Option<PathBuf>,
    stop: watch::Receiver<bool>,
) {
    let signer = match tokio::fs::read_to_string(&key_file).await {
        Ok(pem) => match Signer::from_pem(&pem) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(file = %key_file.display(), error = %e, "service-account-private-key-file: not a usable key; serviceaccount-token controller not started");
                return;
            }
        },
        Err(e) => {
            tracing::error!(file = %key_file.display(), error = %e, "reading service-account-private-key-file; serviceaccount-token controller not started");
            return;
        }
    };
    let root_ca = match &root_ca_file {
        None => None,
        Some(path) => match tokio::fs::read(path).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "reading root-ca-file; serviceaccount-token controller not started");
                return;
            }
        },
    };
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().fields(&format!("type={SECRET_TYPE}")),
    );
    // A ServiceAccount change (its deletion above all) requeues the Secrets naming it.
    let secrets = controller.store();
    let controller = controller
        .watches(
            Api::<ServiceAccount>::all(client),
            watcher::Config::default(),
            move |sa: ServiceAccount| {
                let ns = sa.metadata.namespace.clone().unwrap_or_default();
                let name = sa.metadata.name.clone().unwrap_or_default();
                secrets
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.metadata.namespace.as_deref() == Some(ns.as_str())
                            && annotation(s, NAME_ANNOTATION) == Some(name.as_str())
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        signer,
        root_ca,
        backoff: Backoff::default(),
    });
    util::drain(
        "serviceaccount-token",
        abandon,
        controller.run(
            |secret, ctx| async move {
                let key = util::key_of(secret.meta());
                let r = sync(&secret, &ctx).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |secret, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(secret.meta())),
            ctx,
        ),
    )
    .await;
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// What a token Secret lacks, given its service account's uid (upstream's
/// `generateTokenIfNeeded` tests: no token, no namespace, a `ca.crt` other than the root CA).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Needs {
    pub(crate) token: bool,
    pub(crate) namespace: bool,
    pub(crate) ca: bool,
}

impl Needs {
    pub(crate) fn of(secret: &Secret, root_ca: Option<&[u8]>) -> Needs {
        let data = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|b| &b.0[..])
        };
        Needs {
            token: data("token").is_none_or(<[u8]>::is_empty),
            namespace: data("namespace").is_none_or(<[u8]>::is_empty),
            ca: root_ca.is_some_and(|ca| !ca.is_empty() && data("ca.crt") != Some(ca)),
        }
    }

    fn any(&self) -> bool {
        self.token || self.namespace || self.ca
    }
}

#[tracing::instrument(skip_all, fields(secret = %util::key_of(&secret.metadata)))]
async fn sync(secret: &Secret, ctx: &Ctx) -> Result<Action, ReconcileError> {
    if secret.type_.as_deref() != Some(SECRET_TYPE) || secret.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let Some(sa_name) = annotation(secret, NAME_ANNOTATION).filter(|n| !n.is_empty()) else {
        return Ok(Action::await_change());
    };
    let ns = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let client = ctx.shared.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sas: Api<ServiceAccount> = Api::namespaced(client, &ns);
    let want_uid = annotation(secret, UID_ANNOTATION).unwrap_or("");
    let sa = sas
        .get_opt(sa_name)
        .await?
        .filter(|sa| want_uid.is_empty() || sa.metadata.uid.as_deref() == Some(want_uid));
    let Some(sa) = sa else {
        // The account is gone (or was re-created: another uid): the token goes with it.
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        return match secrets.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(serviceaccount = %sa_name, "service account gone; deleted its token secret");
                Ok(Action::await_change())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                Ok(Action::await_change())
            }
            Err(e) => Err(e.into()),
        };
    };
    if !Needs::of(secret, ctx.root_ca.as_deref()).any() {
        return Ok(Action::await_change());
    }
    // Work on the live Secret (the cached one may be stale), as upstream.
    let Some(mut live) = secrets.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if live.metadata.uid != secret.metadata.uid {
        return Ok(Action::await_change());
    }
    let needs = Needs::of(&live, ctx.root_ca.as_deref());
    if !needs.any() {
        return Ok(Action::await_change());
    }
    let sa_uid = sa.metadata.uid.clone().unwrap_or_default();
    let data = live.data.get_or_insert_with(Default::default);
    if needs.ca
        && let Some(ca) = &ctx.root_ca
    {
        data.insert("ca.crt".into(), ByteString(ca.clone()));
    }
    if needs.namespace {
        data.insert("namespace".into(), ByteString(ns.clone().into_bytes()));
    }
    if needs.token {
        let token = ctx
            .signer
            .token(&ns, sa_name, &sa_uid, &name)
            .map_err(ReconcileError::Invalid)?;
        data.insert("token".into(), ByteString(token.into_bytes()));
    }
    let annotations = live
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(NAME_ANNOTATION.into(), sa_name.to_string());
    annotations.insert(UID_ANNOTATION.into(), sa_uid);
    match secrets.replace(&name, &PostParams::default(), &live).await {
        Ok(_) => {
            tracing::info!(serviceaccount = %sa_name, token = needs.token, "filled a service account token secret");
            Ok(Action::await_change())
        }
        // Changed or deleted meanwhile: the watch brings the new state.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// The ConfigMap the apiserver writes when it starts tracking legacy token use.
const TRACKING_CONFIGMAP: &str = "kube-apiserver-legacy-service-account-token-tracking";
const LAST_USED_LABEL: &str = "kubernetes.io/legacy-token-last-used";
const INVALID_SINCE_LABEL: &str = "kubernetes.io/legacy-token-invalid-since";

/// Upstream's `legacy-serviceaccount-token-cleaner`: every sync period, each auto-generated
/// legacy token Secret (listed in its ServiceAccount's `secrets`, uid annotation matching)
/// older than the clean-up period, not used within it (`kubernetes.io/legacy-token-last-used`,
/// no label = unused since tracking began), not being deleted and not referenced by any pod
/// of its namespace is labelled `kubernetes.io/legacy-token-invalid-since` (today), which
/// makes the apiserver refuse it; one labelled longer ago than the clean-up period is deleted
/// (resourceVersion precondition). Nothing happens until the apiserver has tracked use for a
/// whole period (the `since` date of `kube-system/kube-apiserver-legacy-service-account-token-tracking`).
pub(crate) async fn run_cleaner(
    shared: Arc<Shared>,
    config: crate::LoopConfig,
    stop: watch::Receiver<bool>,
) {
    let period = std::time::Duration::from_secs(config.legacy_service_account_token_sync_period);
    let clean_up = config.legacy_service_account_token_clean_up_period;
    let work = async {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = clean(&shared, clean_up).await {
                tracing::warn!(controller = "legacy-serviceaccount-token-cleaner", error = %e, "pass failed; retried next period");
            }
        }
    };
    tokio::select! {
        _ = crate::stopped(stop) => {}
        () = work => {}
    }
}

fn day(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d").to_string()
}

/// The names of the Secrets a pod refers to (upstream's `VisitPodSecretNames`, the common
/// places).
fn pod_secret_names(
    pod: &k8s_openapi::api::core::v1::Pod,
    out: &mut std::collections::HashSet<String>,
) {
    let Some(spec) = &pod.spec else {
        return;
    };
    for r in spec.image_pull_secrets.iter().flatten() {
        out.insert(r.name.clone());
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    // Containers and ephemeral containers (another type) have the same env fields.
    let env_sources = containers.map(|c| (&c.env_from, &c.env)).chain(
        spec.ephemeral_containers
            .iter()
            .flatten()
            .map(|c| (&c.env_from, &c.env)),
    );
    for (env_from, env) in env_sources {
        for e in env_from.iter().flatten() {
            if let Some(r) = &e.secret_ref {
                out.insert(r.name.clone());
            }
        }
        for e in env.iter().flatten() {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                out.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.insert(name);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(r) = &source.secret {
                out.insert(r.name.clone());
            }
        }
        if let Some(r) = v
            .csi
            .as_ref()
            .and_then(|c| c.node_publish_secret_ref.as_ref())
        {
            out.insert(r.name.clone());
        }
    }
}

async fn clean(shared: &Shared, clean_up_secs: u64) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use std::collections::{HashMap, HashSet};
    let client = shared.client.clone();
    let now = shared.clock.now();
    let period = jiff::SignedDuration::from_secs(i64::try_from(clean_up_secs).unwrap_or(i64::MAX));
    let Some(tracking) = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get_opt(TRACKING_CONFIGMAP)
        .await?
    else {
        return Ok(());
    };
    let Some(since) = tracking
        .data
        .as_ref()
        .and_then(|d| d.get("since"))
        .and_then(|s| s.parse::<jiff::civil::Date>().ok())
    else {
        return Ok(());
    };
    // 00:00 UTC the day after tracking began: the first moment every use was tracked.
    let tracked_from = since
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp());
    let Some(tracked_from) = tracked_from else {
        return Ok(());
    };
    if now
        < tracked_from
            .saturating_add(period)
            .unwrap_or(jiff::Timestamp::MAX)
    {
        return Ok(());
    }
    let cutoff = now.saturating_sub(period).unwrap_or(jiff::Timestamp::MIN);
    let preserve_used_on_or_after = day(cutoff);
    let secrets = Api::<Secret>::all(client.clone())
        .list(&kube::api::ListParams::default().fields(&format!("type={SECRET_TYPE}")))
        .await?;
    let mut mounted: HashMap<String, HashSet<String>> = HashMap::new();
    for secret in secrets.items {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let created = secret.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if created.is_none_or(|c| c >= cutoff) || secret.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        // A malformed date cannot be judged: kept, as upstream.
        if let Some(last) = labels.get(LAST_USED_LABEL)
            && (last.parse::<jiff::civil::Date>().is_err() || *last >= preserve_used_on_or_after)
        {
            continue;
        }
        // Auto-generated: listed in its (same-uid) ServiceAccount's `secrets`.
        let Some(sa_name) = annotation(&secret, NAME_ANNOTATION).filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some(sa) = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .get_opt(sa_name)
            .await?
        else {
            continue;
        };
        let want_uid = annotation(&secret, UID_ANNOTATION).unwrap_or("");
        if !want_uid.is_empty() && sa.metadata.uid.as_deref() != Some(want_uid) {
            continue;
        }
        if !sa
            .secrets
            .iter()
            .flatten()
            .any(|r| r.name.as_deref() == Some(name.as_str()))
        {
            continue;
        }
        if !mounted.contains_key(&ns) {
            let mut names = HashSet::new();
            for pod in Api::<Pod>::namespaced(client.clone(), &ns)
                .list(&kube::api::ListParams::default())
                .await?
                .items
            {
                pod_secret_names(&pod, &mut names);
            }
            mounted.insert(ns.clone(), names);
        }
        if mounted.get(&ns).is_some_and(|m| m.contains(&name)) {
            continue;
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let invalid_since = labels
            .get(INVALID_SINCE_LABEL)
            .filter(|v| v.parse::<jiff::civil::Date>().is_ok());
        let Some(invalid_since) = invalid_since else {
            let today = day(now);
            tracing::info!(secret = %format!("{ns}/{name}"), invalid_since = %today, "marking an unused auto-generated service account token invalid");
            let patch = json_patch_labels(&secret, &today);
            if let Err(e) = api
                .patch(&name, &kube::api::PatchParams::default(), &patch)
                .await
            {
                tracing::warn!(secret = %format!("{ns}/{name}"), error = %e, "could not label the token invalid");
            }
            continue;
        };
        if *invalid_since >= preserve_used_on_or_after {
            continue;
        }
        tracing::info!(secret = %format!("{ns}/{name}"), %invalid_since, "deleting an auto-generated service account token invalid for the whole clean-up period");
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: None,
                resource_version: secret.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!(secret = %format!("{ns}/{name}"), error = %e, "could not delete the token");
            }
        }
    }
    Ok(())
}

/// The merge patch that labels `secret` invalid since `today`, guarded by its uid and
/// resourceVersion.
fn json_patch_labels(secret: &Secret, today: &str) -> kube::api::Patch<serde_json::Value> {
    kube::api::Patch::Merge(serde_json::json!({
        "metadata": {
            "uid": secret.metadata.uid,
            "resourceVersion": secret.metadata.resource_version,
            "labels": { INVALID_SINCE_LABEL: today },
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_token_secret_lacks() {
        let secret = |data: serde_json::Value| -> Secret {
            serde_json::from_value(json!({
                "metadata": {"name": "t", "namespace": "ns"},
                "type": SECRET_TYPE,
                "data": data,
            }))
            .unwrap()
        };
        assert_eq!(
            Needs::of(&secret(json!({})), Some(b"CA")),
            Needs {
                token: true,
                namespace: true,
                ca: true
            }
        );
        // "dG9r" = "tok", "bnM=" = "ns", "Q0E=" = "CA"
        let full = secret(json!({"token": "dG9r", "namespace": "bnM=", "ca.crt": "Q0E="}));
        assert!(!Needs::of(&full, Some(b"CA")).any());
        assert!(
            Needs::of(&full, Some(b"CA2")).ca,
            "a changed CA is replaced"
        );
        assert!(
            !Needs::of(&full, None).any(),
            "no root CA: ca.crt left alone"
        );
    }

    #[test]
    fn tokens_carry_the_legacy_claims() {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let signer = Signer::from_pem(&pem).unwrap();
        let token = signer.token("ns", "sa", "uid-1", "sa-token").unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(signer.key_id.as_str()));
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            claims,
            json!({
                "iss": "kubernetes/serviceaccount",
                "sub": "system:serviceaccount:ns:sa",
                "kubernetes.io/serviceaccount/namespace": "ns",
                "kubernetes.io/serviceaccount/secret.name": "sa-token",
                "kubernetes.io/serviceaccount/service-account.name": "sa",
                "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
            })
        );
    }
}
