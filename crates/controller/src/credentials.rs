//! `--use-service-account-credentials` (upstream kube-controller-manager's flag, which K3s
//! sets): every controller loop talks to the apiserver as its own service account,
//! `system:serviceaccount:kube-system:<account>`, bound by the apiserver's bootstrap policy to
//! upstream's least-privilege role `system:controller:<account>` (plus, where rk3s' loop does
//! more than upstream's, a small `rk3s:controller:<account>` supplement).
//!
//! As upstream's `SAControllerClientBuilder`, the manager (on its own identity,
//! `system:kube-controller-manager`) makes sure the service account exists in `kube-system`,
//! asks the TokenRequest API (`serviceaccounts/<account>/token`) for a one-hour token, and
//! hands the loop a client of the manager's server and CA that sends that token as its bearer
//! (no client certificate: the apiserver would authenticate the certificate first). A
//! background task asks for the next token at 80 % of the current one's lifetime, retrying
//! with backoff. Loops of one account share one client and one token. Leader election and
//! Events stay on the manager's identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http::HeaderValue;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{OnceCell, watch};

/// The namespace of the controllers' service accounts.
pub(crate) const NAMESPACE: &str = "kube-system";
/// The lifetime asked for each token, in seconds (upstream's one hour).
const TOKEN_SECONDS: i64 = 3600;
/// Fraction of a token's lifetime after which the next one is asked for.
const REFRESH_AT: f64 = 0.8;
/// First and longest wait between failed token requests.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Whose identity a controller loop uses with `--use-service-account-credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// The manager's own credentials (upstream's root client builder, for the loops it does
    /// not give a service account).
    Manager,
    /// The service account `kube-system/<name>`.
    ServiceAccount(&'static str),
}

/// The account each loop of [`crate::CONTROLLERS`] runs as: upstream v1.33's
/// `ClientBuilder.ClientOrDie(<name>)` name of the loop (`taint-eviction-controller` and
/// `nodeipam` use `node-controller`, as upstream), and for rk3s' own `nodepassword` loop
/// (K3s' node-password controller) `node-password-controller`, whose role the apiserver's
/// bootstrap policy defines. `None` for a name that is not a loop.
pub fn account_of(loop_name: &str) -> Option<Account> {
    let sa = match loop_name {
        "replicaset" => "replicaset-controller",
        "replicationcontroller" => "replication-controller",
        "deployment" => "deployment-controller",
        "garbagecollector" => "generic-garbage-collector",
        "endpoints" => "endpoint-controller",
        "endpointslice" => "endpointslice-controller",
        "serviceaccount" => "service-account-controller",
        "statefulset" => "statefulset-controller",
        "daemonset" => "daemon-set-controller",
        "job" => "job-controller",
        "cronjob" => "cronjob-controller",
        "ttl-after-finished" => "ttl-after-finished-controller",
        "resourcequota" => "resourcequota-controller",
        "disruption" => "disruption-controller",
        "namespace" => "namespace-controller",
        "nodelifecycle" | "nodeipam" | "taint-eviction-controller" => "node-controller",
        "csrapproving" | "csrsigning" => "certificate-controller",
        "persistentvolume-binder" => "persistent-volume-binder",
        "pvc-protection" => "pvc-protection-controller",
        "pv-protection" => "pv-protection-controller",
        "pod-garbage-collector" => "pod-garbage-collector",
        "horizontal-pod-autoscaling" => "horizontal-pod-autoscaler",
        "tokencleaner" => "token-cleaner",
        "nodepassword" => "node-password-controller",
        "legacy-serviceaccount-token-cleaner" => "legacy-service-account-token-cleaner",
        // Upstream runs the legacy service-account token controller with the manager's
        // root credentials (it creates token Secrets for every service account).
        "serviceaccount-token" => return Some(Account::Manager),
        _ => return None,
    };
    Some(Account::ServiceAccount(sa))
}

/// Why a service account's client cannot be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialsError {
    /// The apiserver refused or could not be reached.
    #[error("service account {NAMESPACE}/{account}: {source}")]
    Api {
        account: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The TokenRequest answer carries no usable token.
    #[error("service account {NAMESPACE}/{account}: the TokenRequest returned no usable token")]
    NoToken { account: &'static str },
}

/// The per-account clients of one leadership term (their token refreshers stop with `stop`).
pub(crate) struct Credentials {
    /// The manager's own client: it creates the service accounts and asks for their tokens.
    manager: Client,
    /// The manager's kube config without its credentials (server, CA, timeouts).
    base: kube::Config,
    clients: Mutex<HashMap<&'static str, Arc<OnceCell<Client>>>>,
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.base.cluster_url)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials for the loops of one term: `config` is the manager's (its server and CA are
    /// kept, its own credentials dropped).
    pub(crate) fn new(manager: Client, config: &kube::Config, stop: watch::Receiver<bool>) -> Self {
        let mut base = config.clone();
        base.auth_info = kube::config::AuthInfo::default();
        Credentials {
            manager,
            base,
            clients: Mutex::new(HashMap::new()),
            stop,
        }
    }

    /// The client of `account`, once its first token is had (retried with backoff);
    /// `None` when the term stops first.
    pub(crate) async fn client(&self, account: &'static str) -> Option<Client> {
        let cell = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(account)
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let (header, lifetime) = self.first_token(account).await.ok_or(())?;
            let header = Arc::new(RwLock::new(header));
            let client = match bearer_client(&self.base, header.clone()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(%account, error = %e, "cannot build the service account's client");
                    return Err(());
                }
            };
            tokio::spawn(refresh(
                self.manager.clone(),
                account,
                header,
                lifetime,
                self.stop.clone(),
            ));
            Ok::<_, ()>(client)
        })
        .await
        .ok()
        .cloned()
    }

    async fn first_token(&self, account: &'static str) -> Option<(HeaderValue, Duration)> {
        let mut delay = RETRY_FIRST;
        loop {
            match token(&self.manager, account).await {
                Ok(t) => return Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get the controller's token; retrying")
                }
            }
            if !wait_or_stop(&self.stop, delay).await {
                return None;
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// Sleeps `d`; false when `stop` turned true first.
async fn wait_or_stop(stop: &watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = crate::stopped(stop.clone()) => false,
        () = tokio::time::sleep(d) => true,
    }
}

/// Keeps `header` holding a valid token of `account` until `stop`.
async fn refresh(
    manager: Client,
    account: &'static str,
    header: Arc<RwLock<HeaderValue>>,
    mut lifetime: Duration,
    stop: watch::Receiver<bool>,
) {
    loop {
        if !wait_or_stop(&stop, lifetime.mul_f64(REFRESH_AT)).await {
            return;
        }
        let mut delay = RETRY_FIRST;
        loop {
            match token(&manager, account).await {
                Ok((h, l)) => {
                    *header.write().unwrap_or_else(PoisonError::into_inner) = h;
                    lifetime = l;
                    tracing::debug!(%account, ?lifetime, "refreshed the controller's token");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh the controller's token; retrying")
                }
            }
            if !wait_or_stop(&stop, delay).await {
                return;
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// Makes sure `kube-system/<account>` exists and asks for a token of it: the `Authorization`
/// header value and the token's lifetime.
async fn token(
    manager: &Client,
    account: &'static str,
) -> Result<(HeaderValue, Duration), CredentialsError> {
    let api_err = |source| CredentialsError::Api { account, source };
    let sas: Api<ServiceAccount> = Api::namespaced(manager.clone(), NAMESPACE);
    if sas.get_opt(account).await.map_err(api_err)?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(account.into()),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(%account, "created the controller's service account"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_err(e)),
        }
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer = sas
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(api_err)?;
    let status = answer.status.ok_or(CredentialsError::NoToken { account })?;
    let mut header = HeaderValue::from_str(&format!("Bearer {}", status.token))
        .map_err(|_| CredentialsError::NoToken { account })?;
    header.set_sensitive(true);
    let left = status
        .expiration_timestamp
        .0
        .duration_since(crate::util::now());
    let lifetime = Duration::try_from(left)
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(TOKEN_SECONDS as u64));
    Ok((header, lifetime))
}

/// A client of `base`'s server and CA that sends the current value of `header` as its
/// `Authorization`.
fn bearer_client(
    base: &kube::Config,
    header: Arc<RwLock<HeaderValue>>,
) -> Result<Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(base.clone())?;
    let layer =
        tower::util::MapRequestLayer::new(move |mut req: http::Request<kube::client::Body>| {
            let value = header
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
            req
        });
    Ok(builder.with_layer(&layer).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loop_has_an_account() {
        for name in crate::CONTROLLERS {
            assert!(account_of(name).is_some(), "{name} has no account");
        }
        assert_eq!(account_of("nope"), None);
    }

    #[test]
    fn accounts_are_upstreams() {
        for (name, sa) in [
            ("deployment", "deployment-controller"),
            ("garbagecollector", "generic-garbage-collector"),
            ("taint-eviction-controller", "node-controller"),
            ("nodeipam", "node-controller"),
            ("csrsigning", "certificate-controller"),
            ("horizontal-pod-autoscaling", "horizontal-pod-autoscaler"),
            ("tokencleaner", "token-cleaner"),
        ] {
            assert_eq!(
                account_of(name),
                Some(Account::ServiceAccount(sa)),
                "{name}"
            );
        }
        assert_eq!(account_of("serviceaccount-token"), Some(Account::Manager));
    }
}
