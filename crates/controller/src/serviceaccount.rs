//! The ServiceAccount controller: every active namespace has a ServiceAccount `default`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use tokio::sync::watch;

use crate::ReconcileError;
use crate::util::{self, Backoff, Shared};

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ServiceAccount>::all(client),
        watcher::Config::default(),
        |sa: ServiceAccount| {
            (sa.name_any() == "default")
                .then(|| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)))
                .flatten()
        },
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
    .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
    });
    util::drain(
        "serviceaccount",
        abandon,
        controller.run(
            |ns, ctx| async move {
                let key = ns.name_any();
                let r = sync(&ns, &ctx.shared).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |ns, _e, ctx| util::error_action(&ctx.backoff, &ns.name_any()),
            ctx,
        ),
    )
    .await;
}

async fn sync(ns: &Namespace, shared: &Shared) -> Result<Action, ReconcileError> {
    let terminating = ns.meta().deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(shared.client.clone(), &name);
    if api.get_opt("default").await?.is_some() {
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            namespace: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => tracing::info!(namespace = %name, "created service account default"),
        // Exists already, or the namespace is going away.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
