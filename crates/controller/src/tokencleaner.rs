//! The token cleaner (upstream's `pkg/controller/bootstrap/tokencleaner`): deletes bootstrap
//! token Secrets (`kube-system`, type `bootstrap.kubernetes.io/token`) once their
//! `expiration` has passed, and requeues the others for when they expire. The delete carries
//! the Secret's uid as a precondition, so a token re-created under the same name is not
//! taken. Tokens without an `expiration` are kept forever. Its permissions are upstream's
//! namespaced Role `system:controller:token-cleaner` (secrets in `kube-system`: get, list,
//! watch, delete; events), bound to its account `kube-system/token-cleaner`
//! (`--use-service-account-credentials`); without that flag the manager's union role covers it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Shared};

const NAMESPACE: &str = "kube-system";
const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let controller = Controller::new(
        Api::<Secret>::namespaced(shared.client.clone(), NAMESPACE),
        watcher::Config::default().fields(&format!("type={SECRET_TYPE}")),
    );
    util::run_controller(
        "tokencleaner",
        shared,
        controller,
        stop,
        |secret, shared| async move { sync(&secret, &shared).await },
    )
    .await;
}

/// Time left before a bootstrap token Secret expires: `None` when it never does (no or an
/// unparsable `expiration`, as upstream keeps those) or is not a bootstrap token; zero when
/// expired.
pub(crate) fn time_left(secret: &Secret, now: Timestamp) -> Option<Duration> {
    if secret.type_.as_deref() != Some(SECRET_TYPE) || secret.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let raw = secret.data.as_ref()?.get("expiration")?;
    let at: Timestamp = std::str::from_utf8(&raw.0).ok()?.trim().parse().ok()?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

#[tracing::instrument(skip_all, fields(secret = %util::key_of(&secret.metadata)))]
async fn sync(secret: &Secret, shared: &Shared) -> Result<Action, ReconcileError> {
    match time_left(secret, shared.clock.now()) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    let name = secret.metadata.name.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), NAMESPACE);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match secrets.delete(&name, &dp).await {
        Ok(_) => {
            tracing::info!("deleted expired bootstrap token");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expiry_from_the_expiration_field() {
        let secret = |ty: &str, exp: Option<&str>| -> Secret {
            let mut data = json!({ "token-id": "YWJjZGVm" });
            if let Some(e) = exp {
                data["expiration"] = json!(base64(e));
            }
            serde_json::from_value(json!({
                "metadata": {"name": "bootstrap-token-abcdef", "namespace": NAMESPACE},
                "type": ty,
                "data": data,
            }))
            .unwrap()
        };
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        assert_eq!(
            time_left(&secret(SECRET_TYPE, Some("2026-01-01T00:01:00Z")), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            time_left(&secret(SECRET_TYPE, Some("2026-01-01T00:00:00Z")), now),
            Some(Duration::ZERO)
        );
        assert_eq!(time_left(&secret(SECRET_TYPE, None), now), None);
        assert_eq!(
            time_left(&secret("Opaque", Some("2026-01-01T00:00:00Z")), now),
            None
        );
    }

    fn base64(s: &str) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
