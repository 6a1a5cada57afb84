//! Admission webhooks: upstream's MutatingAdmissionWebhook and ValidatingAdmissionWebhook
//! plugins (`k8s.io/apiserver/pkg/admission/plugin/webhook`), on the webhooks of the
//! `admissionregistration.k8s.io/v1` `MutatingWebhookConfiguration`s and
//! `ValidatingWebhookConfiguration`s.
//!
//! - **Where**: [`scope`] wraps every write request (`rest::serve`) with its [`Request`] (the
//!   attributes that do not depend on the object: user, resource, subresource, dry run,
//!   options) and collects the webhooks' warnings into `Warning` headers of the answer,
//!   whatever it is. The handlers call [`mutate`] after rk3s' built-in mutating admission
//!   (defaults, LimitRanger, Priority, ServiceAccount) and before validation, and
//!   [`validate`] after validation and the other validating plugins, before ResourceQuota
//!   and the write: on creates (`create_object_as`), on updates, patches and applies of the
//!   main resource, `/status`, `/finalize` and `/approval` (inside the compare-and-swap loop
//!   of `guaranteed_update_admitted`, on the object it replaces), and on deletes (mutating
//!   once per request without an object, validating per object with the stored one as
//!   `oldObject`, as upstream). Subresources whose object is of their own kind are sent
//!   with that kind (`kind` and `requestKind`), as upstream: `pods/eviction` (CREATE of a
//!   `policy/v1` `Eviction`), `pods/binding` (CREATE of a `v1` `Binding`, validating webhooks
//!   after its checks), `serviceaccounts/token` ([`admit_token_request`]: CREATE of an
//!   `authentication.k8s.io/v1` `TokenRequest`), every `scale` (UPDATE of an `autoscaling/v1`
//!   `Scale`, the old one made from the stored object; `rest::scale` admits it again when the
//!   object changed meanwhile); and CONNECTs ([`Request::connect`], [`admit_connect`]:
//!   `pods/exec`, `attach`, `portforward`, `pods`/`services`/`nodes` `proxy`, with the `v1`
//!   options upstream decodes from the query — `PodExecOptions`, ... — as the object, no
//!   `oldObject` or `options`; options a mutating webhook changes are connected with, but
//!   for a proxy `path`). `pods/ephemeralcontainers` and `pods/resize` are not served. Writes
//!   the server makes itself (bootstrap, controllers in this process) have no [`Request`]
//!   and are not intercepted.
//! - **Configurations** are read from the watch cache (resourceVersion 0; the store only
//!   until the cache of their prefix has started), sorted by name; webhooks in configuration
//!   order. Objects of the admission configuration kinds themselves are never intercepted.
//! - **Matching** (upstream's `ShouldCallHook`): `rules` (operations, apiGroups,
//!   apiVersions, resources with `*`, `*/*`, `res/sub`, `res/*`, `*/sub`, scope), else with
//!   `matchPolicy: Equivalent` (the default) the same resource in another served version
//!   sharing its storage (the object converted to that version, and back after a patch);
//!   `namespaceSelector` (labels of the request's namespace; cluster-scoped objects other
//!   than namespaces always match; a namespace's own labels on its create/update);
//!   `objectSelector` (new or old object's labels).
//! - **Calls**: an `AdmissionReview` of the first of `admissionReviewVersions` rk3s speaks
//!   (`v1`, `v1beta1`), through [`crate::webhook::ClientConfig`] with `timeoutSeconds`
//!   (default 10). A dry run is refused (400) by a webhook whose `sideEffects` is not
//!   `None`/`NoneOnDryRun`. Failures to call, or answers that do not verify (uid, kind,
//!   patch rules), follow `failurePolicy` (`Fail`, the default: 500
//!   `failed calling webhook "<name>": ...`; `Ignore`: skipped). `allowed: false` is the
//!   result's code (at least 400) with `admission webhook "<name>" denied the request: ...`.
//!   Mutating webhooks run one by one and their `JSONPatch`es are applied in turn;
//!   `reinvocationPolicy: IfNeeded` webhooks run once more when a later webhook changed the
//!   object. Validating webhooks run in parallel; the first error (in webhook order) wins.
//! - **Metrics and audit**: every call is recorded in upstream's
//!   `apiserver_admission_webhook_admission_duration_seconds`, `_request_total` and
//!   `_rejection_count` ([`crate::metrics`]; codes as upstream's dispatchers give them: 200,
//!   the denial's code, the failed call's — the webhook's HTTP status, else 400 validating /
//!   503 mutating, 503 for an answer that does not verify —, 0 for internal errors; a match
//!   condition that fails to evaluate is not a call). The answers' `auditAnnotations` go on
//!   the request's audit event as `<webhook>/<key>`, with upstream's
//!   `mutation.webhook.admission.k8s.io/round_<r>_index_<i>`,
//!   `patch.webhook.admission.k8s.io/...` (level Request) and `failed-open.{mutation,
//!   validating}.webhook.admission.k8s.io/...` annotations ([`crate::audit::current`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, Uri, header};
use axum::response::Response;
use base64::Engine as _;
use rk3s_datastore::ListOptions;
use serde_json::{Value, json};

use crate::registry::{REGISTRY, ResourceInfo};
use crate::rest::{PatchKind, Query, Target, apply_patch, decode_stored, object_meta_str};
use crate::selectors::{LabelSelector, selector_text};
use crate::server::AppState;
use crate::status::ApiError;
use crate::webhook::{ClientConfig, WebhookError};

const GROUP: &str = "admissionregistration.k8s.io";
/// `timeoutSeconds` when a webhook does not say.
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// The `AdmissionReview` versions rk3s speaks.
const REVIEW_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// An admission operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
    /// `pods/exec`, `attach`, `portforward` and the `proxy` subresources.
    Connect,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

/// The attributes of the write request being served that do not depend on the object.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) user: crate::auth::UserInfo,
    pub(crate) method: Method,
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
    pub(crate) subresource: String,
    /// The namespace in the path.
    pub(crate) namespace: String,
    /// The name in the path (empty on creates and collections).
    pub(crate) name: String,
    pub(crate) dry_run: bool,
    /// The request's `CreateOptions`/`UpdateOptions`/`PatchOptions`/`DeleteOptions`.
    pub(crate) options: Value,
    /// What the webhooks answered in `warnings`.
    pub(crate) warnings: Mutex<Vec<String>>,
}

impl Request {
    /// The attributes of a write (`None` for reads: nothing to admit).
    pub(crate) fn new(
        method: &Method,
        target: &Target,
        user: &crate::auth::UserInfo,
        query: &Query,
        body: &[u8],
    ) -> Option<Request> {
        let mut dry_run = query.get("dryRun").is_some_and(|v| v == "All");
        let mut options = match *method {
            Method::POST => json!({"kind": "CreateOptions"}),
            Method::PUT => json!({"kind": "UpdateOptions"}),
            Method::PATCH => json!({"kind": "PatchOptions"}),
            Method::DELETE => {
                // The body's DeleteOptions, if it is one (kubectl sends one).
                let mut o = serde_json::from_slice::<Value>(body)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                for key in ["gracePeriodSeconds", "propagationPolicy"] {
                    if let Some(v) = query.get(key) {
                        o[key] = match v.parse::<i64>() {
                            Ok(n) => json!(n),
                            Err(_) => json!(v),
                        };
                    }
                }
                o["kind"] = json!("DeleteOptions");
                dry_run |= o
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|v| v == "All"));
                o
            }
            _ => return None,
        };
        options["apiVersion"] = json!("meta.k8s.io/v1");
        if dry_run {
            options["dryRun"] = json!(["All"]);
        }
        if *method != Method::DELETE {
            if let Some(m) = query.get("fieldManager") {
                options["fieldManager"] = json!(m);
            }
            if *method == Method::PATCH && crate::rest::flag(query, "force") {
                options["force"] = json!(true);
            }
        }
        let info = &target.info;
        Some(Request {
            user: user.clone(),
            method: method.clone(),
            group: info.group.to_string(),
            version: info.version.to_string(),
            plural: info.plural.to_string(),
            subresource: target.subresource.clone().unwrap_or_default(),
            namespace: target.namespace.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
            dry_run,
            options,
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// The attributes of a CONNECT (`pods/exec`, `pods/attach`, `pods/portforward`, the
    /// `proxy` subresources; `None` for `pods/log`, a read). Its method is `CONNECT`, whatever
    /// the HTTP method, and it has no operation options (upstream's are nil).
    pub(crate) fn connect(target: &Target, user: &crate::auth::UserInfo) -> Option<Request> {
        connect_kind(target)?;
        let info = &target.info;
        Some(Request {
            user: user.clone(),
            method: Method::CONNECT,
            group: info.group.to_string(),
            version: info.version.to_string(),
            plural: info.plural.to_string(),
            subresource: target.subresource.clone().unwrap_or_default(),
            namespace: target.namespace.clone().unwrap_or_default(),
            name: target.name.clone().unwrap_or_default(),
            dry_run: false,
            options: Value::Null,
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// Whether an admission of `op` on `info` is this request's own (and not, say, the
    /// delete an eviction makes, or the update of the pod a binding makes).
    fn admits(&self, info: &ResourceInfo, op: Operation) -> bool {
        let sub = self.subresource.as_str();
        let op_ok = match (&self.method, op) {
            (&Method::POST, Operation::Create) => {
                matches!(sub, "" | "eviction" | "binding" | "token")
            }
            (&Method::PUT | &Method::PATCH, Operation::Create) => sub.is_empty(),
            (&Method::PUT | &Method::PATCH, Operation::Update) => {
                matches!(sub, "" | "status" | "finalize" | "approval" | "scale")
            }
            (&Method::DELETE, Operation::Delete) => sub.is_empty(),
            (&Method::CONNECT, Operation::Connect) => true,
            _ => false,
        };
        op_ok
            && info.group == self.group
            && info.version == self.version
            && info.plural == self.plural
    }
}

tokio::task_local! {
    static REQUEST: Arc<Request>;
}

/// Serves `f` as the request `request` (admission webhooks see its attributes) and puts the
/// webhooks' warnings on the answer.
pub(crate) async fn scope<F: Future<Output = Response>>(
    request: Option<Request>,
    f: F,
) -> Response {
    let Some(request) = request else {
        return f.await;
    };
    let request = Arc::new(request);
    let mut response = REQUEST.scope(request.clone(), f).await;
    let warnings = std::mem::take(&mut *request.warnings.lock().unwrap_or_else(|e| e.into_inner()));
    for w in warnings {
        let text = format!("299 - {}", Value::String(w));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// The kind of the object a subresource takes when it is not the resource's own, as the
/// REST storage of the subresource tells upstream: `pods/eviction` a `policy/v1` `Eviction`,
/// `pods/binding` a `Binding`, `serviceaccounts/token` an `authentication.k8s.io/v1`
/// `TokenRequest`, every `scale` an `autoscaling/v1` `Scale`, and CONNECT subresources their
/// options (`PodExecOptions`, ...).
fn subresource_kind(info: &ResourceInfo, subresource: &str) -> Option<Value> {
    let (group, kind) = match (info.group, info.plural, subresource) {
        ("", "pods", "eviction") => ("policy", "Eviction"),
        ("", "pods", "binding") => ("", "Binding"),
        ("", "serviceaccounts", "token") => ("authentication.k8s.io", "TokenRequest"),
        (_, _, "scale") => ("autoscaling", "Scale"),
        (group, plural, sub) => ("", options_kind(group, plural, sub)?),
    };
    Some(json!({"group": group, "version": "v1", "kind": kind}))
}

/// The `v1` options kind of a CONNECT subresource.
fn options_kind(group: &str, plural: &str, subresource: &str) -> Option<&'static str> {
    if !group.is_empty() {
        return None;
    }
    Some(match (plural, subresource) {
        ("pods", "exec") => "PodExecOptions",
        ("pods", "attach") => "PodAttachOptions",
        ("pods", "portforward") => "PodPortForwardOptions",
        ("pods", "proxy") => "PodProxyOptions",
        ("services", "proxy") => "ServiceProxyOptions",
        ("nodes", "proxy") => "NodeProxyOptions",
        _ => return None,
    })
}

/// The options kind of a CONNECT `target` (`None`: not a CONNECT).
fn connect_kind(target: &Target) -> Option<&'static str> {
    target.name.as_ref()?;
    options_kind(
        target.info.group,
        target.info.plural,
        target.subresource.as_deref()?,
    )
}

/// The options upstream decodes from a CONNECT's query (its parameter codec: a flag is true
/// unless absent, empty-listed, `0` or `false`) and, for `proxy`, the path after `proxy`.
fn connect_options(target: &Target, uri: &Uri) -> Option<Value> {
    let kind = connect_kind(target)?;
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let all = |k: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let mut o = json!({"kind": kind, "apiVersion": "v1"});
    match kind {
        "PodExecOptions" | "PodAttachOptions" => {
            for k in ["stdin", "stdout", "stderr", "tty"] {
                if all(k)
                    .first()
                    .is_some_and(|v| *v != "0" && !v.eq_ignore_ascii_case("false"))
                {
                    o[k] = json!(true);
                }
            }
            if let Some(c) = all("container").first().filter(|c| !c.is_empty()) {
                o["container"] = json!(c);
            }
            if kind == "PodExecOptions" {
                // `command` has no `omitempty` upstream.
                let command = all("command");
                o["command"] = if command.is_empty() {
                    Value::Null
                } else {
                    json!(command)
                };
            }
        }
        "PodPortForwardOptions" => {
            let ports: Vec<i64> = all("ports")
                .iter()
                .filter_map(|p| p.parse::<i32>().ok())
                .map(i64::from)
                .collect();
            if !ports.is_empty() {
                o["ports"] = json!(ports);
            }
        }
        _ => {
            // The subpath after `<name>/proxy`, with a leading slash and the request's
            // trailing slash (upstream's `getRequestOptions`).
            let name = target.name.as_deref().unwrap_or_default();
            let segs: Vec<&str> = uri.path().split('/').collect();
            let at = segs
                .windows(3)
                .position(|w| w[0] == target.info.plural && w[1] == name && w[2] == "proxy");
            let mut path = at.map(|i| segs[i + 3..].join("/")).unwrap_or_default();
            if !path.is_empty() && !path.starts_with('/') {
                path.insert(0, '/');
            }
            if uri.path().ends_with('/') && !path.ends_with('/') {
                path.push('/');
            }
            if !path.is_empty() {
                o["path"] = json!(path);
            }
        }
    }
    Some(o)
}

/// The query a CONNECT goes on with after a mutating webhook changed its options (upstream
/// connects with the options as patched). The `path` of proxy options is not taken over.
fn connect_query(options: &Value) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for k in ["stdin", "stdout", "stderr", "tty"] {
        if options.get(k).and_then(Value::as_bool) == Some(true) {
            out.append_pair(k, "true");
        }
    }
    if let Some(c) = options.get("container").and_then(Value::as_str) {
        out.append_pair("container", c);
    }
    for c in strings(options.get("command")) {
        out.append_pair("command", &c);
    }
    for p in options
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
    {
        out.append_pair("ports", &p.to_string());
    }
    out.finish()
}

/// Admits a CONNECT to `target` (upstream's connect handler: mutating, then validating
/// admission of its options; run inside [`scope`] with [`Request::connect`]). Returns the URI
/// to connect with: `uri`, or its query rebuilt from options a mutating webhook changed.
pub(crate) async fn admit_connect(
    state: &AppState,
    target: &Target,
    uri: &Uri,
) -> Result<Uri, ApiError> {
    let Some(mut options) = connect_options(target, uri) else {
        return Ok(uri.clone());
    };
    let info = target.info.as_ref();
    let changed = mutate(state, info, Operation::Connect, Some(&mut options), None).await?;
    validate(state, info, Operation::Connect, Some(&options), None).await?;
    if !changed {
        return Ok(uri.clone());
    }
    let query = connect_query(&options);
    let rebuilt = if query.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{query}", uri.path())
    };
    rebuilt
        .parse()
        .map_err(|e| ApiError::internal(format!("the patched options make no URI: {e}")))
}

/// `obj` as the typed object upstream decodes from a subresource's body: its `apiVersion`
/// and `kind` when the body leaves them out, and the request's namespace
/// (`EnsureObjectNamespaceMatchesRequestNamespace`).
pub(crate) fn typed_body(obj: &mut Value, api_version: &str, kind: &str, namespace: Option<&str>) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    o.entry("apiVersion").or_insert_with(|| json!(api_version));
    o.entry("kind").or_insert_with(|| json!(kind));
    if let Some(ns) = namespace {
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut()
            && m.get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        {
            m.insert("namespace".into(), json!(ns));
        }
    }
}

/// Admits a TokenRequest (`serviceaccounts/token`, CREATE of an `authentication.k8s.io/v1`
/// `TokenRequest`; run inside [`scope`]): mutating webhooks see the request as decoded
/// (`spec.expirationSeconds` defaulted to 3600), validating ones as upstream's TokenREST
/// hands it to them (name, audiences defaulted to the server's, `creationTimestamp`).
/// Returns the body to go on with when a mutating webhook changed it (JSON). A body that
/// does not decode is left to the token handler to refuse.
pub(crate) async fn admit_token_request(
    state: &AppState,
    info: &ResourceInfo,
    namespace: &str,
    name: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    if current(info, Operation::Create).is_none() || exempt(info) {
        return Ok(None);
    }
    let Ok(mut request) = crate::auth::body_json(headers, body, "TokenRequest") else {
        return Ok(None);
    };
    if !request.is_object() {
        return Ok(None);
    }
    typed_body(
        &mut request,
        "authentication.k8s.io/v1",
        "TokenRequest",
        Some(namespace),
    );
    if !request.get("spec").is_some_and(Value::is_object) {
        request["spec"] = json!({});
    }
    if request["spec"].get("expirationSeconds").is_none() {
        request["spec"]["expirationSeconds"] = json!(3600);
    }
    let changed = mutate(state, info, Operation::Create, Some(&mut request), None).await?;
    let mut seen = request.clone();
    if object_meta_str(&seen, "name").is_empty() {
        seen["metadata"]["name"] = json!(name);
    }
    if strings(seen["spec"].get("audiences")).is_empty() {
        seen["spec"]["audiences"] = json!(state.auth.service_accounts.audiences);
    }
    seen["metadata"]["creationTimestamp"] = json!(crate::time::now_rfc3339());
    seen["status"] = json!({});
    validate(state, info, Operation::Create, Some(&seen), None).await?;
    if !changed {
        return Ok(None);
    }
    serde_json::to_vec(&request)
        .map(Some)
        .map_err(ApiError::internal)
}

/// The request being served, if `op` on `info` is its own admission.
fn current(info: &ResourceInfo, op: Operation) -> Option<Arc<Request>> {
    REQUEST
        .try_with(Arc::clone)
        .ok()
        .filter(|r| r.admits(info, op))
}

/// Runs the mutating webhooks on a create or update (`obj`: the object in `info`'s form,
/// changed in place), or on a delete (`obj` `None`: upstream gives mutating webhooks no object
/// on deletes). Returns whether the object changed: the caller then decodes, defaults and
/// validates it again.
pub(crate) async fn mutate(
    state: &AppState,
    info: &ResourceInfo,
    op: Operation,
    mut obj: Option<&mut Value>,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    let Some(req) = current(info, op) else {
        return Ok(false);
    };
    if exempt(info) {
        return Ok(false);
    }
    let hooks = hooks(state, true).await?;
    if hooks.is_empty() {
        return Ok(false);
    }
    let audit = crate::audit::current();
    let mut ns_labels = NamespaceLabels::default();
    let mut changed_any = false;
    // Per webhook: whether it was called, and whether the object changed after its call.
    let mut called = vec![false; hooks.len()];
    let mut changed_after = vec![false; hooks.len()];
    for round in 0..2 {
        for (i, hook) in hooks.iter().enumerate() {
            if round == 1 && !(hook.reinvoke && called[i] && changed_after[i]) {
                continue;
            }
            let attrs = Attrs {
                req: &req,
                info,
                op,
                obj: obj.as_deref(),
                old,
            };
            let Some(target) = matches(state, hook, &attrs, &mut ns_labels).await? else {
                continue;
            };
            let at = Invocation {
                round,
                index: i,
                audit: audit.as_ref(),
            };
            let started = Instant::now();
            let prepared = prepare(state, hook, &attrs, &target).await?;
            let Some(answer) = finish(state, hook, &req, op, prepared, true, at, started).await?
            else {
                continue;
            };
            called[i] = true;
            if round == 1 {
                changed_after[i] = false;
            }
            let Some(patch) = answer.patch else {
                at.mutated(hook, false);
                continue;
            };
            let Some(o) = obj.as_deref_mut() else {
                return Err(ApiError::bad_request(format!(
                    "admission webhook {:?} attempted to modify the object, which is not \
                     supported for this operation",
                    hook.name
                )));
            };
            let before = object_as(state, &req, info, &target, o.clone()).await?;
            let patched = apply_patch(PatchKind::Json, &before, &patch, None)
                .map_err(|e| ApiError::internal(e.message))?;
            at.mutated(hook, patched != before);
            at.patched(hook, &patch);
            if patched != before {
                *o = object_as(state, &req, &target, info, patched).await?;
                changed_any = true;
                // A namespace's own labels may have changed.
                ns_labels = NamespaceLabels::default();
                for (j, c) in changed_after.iter_mut().enumerate() {
                    if j != i && called[j] {
                        *c = true;
                    }
                }
            }
        }
        if !hooks
            .iter()
            .enumerate()
            .any(|(i, h)| h.reinvoke && called[i] && changed_after[i])
        {
            break;
        }
    }
    Ok(changed_any)
}

/// Runs the validating webhooks (in parallel) on a create or update (`obj`, and `old` for
/// updates) or a delete (`old`: the object being deleted).
pub(crate) async fn validate(
    state: &AppState,
    info: &ResourceInfo,
    op: Operation,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(req) = current(info, op) else {
        return Ok(());
    };
    if exempt(info) {
        return Ok(());
    }
    crate::admission_policy::validate(state, &req, info, op, obj, old).await?;
    let hooks = hooks(state, false).await?;
    if hooks.is_empty() {
        return Ok(());
    }
    let attrs = Attrs {
        req: &req,
        info,
        op,
        obj,
        old,
    };
    let mut ns_labels = NamespaceLabels::default();
    let mut relevant = Vec::new();
    for hook in hooks.iter() {
        if let Some(target) = matches(state, hook, &attrs, &mut ns_labels).await? {
            relevant.push((hook, target));
        }
    }
    // Each call on its own task; answers are taken in webhook order.
    let audit = crate::audit::current();
    let mut calls = Vec::new();
    for (index, (hook, target)) in relevant.into_iter().enumerate() {
        let started = Instant::now();
        let prepared = prepare(state, hook, &attrs, &target).await;
        let (state, hook) = (state.clone(), hook.clone());
        let (req, audit) = (req.clone(), audit.clone());
        calls.push(tokio::spawn(async move {
            let at = Invocation {
                round: 0,
                index,
                audit: audit.as_ref(),
            };
            finish(&state, &hook, &req, op, prepared?, false, at, started).await
        }));
    }
    let mut first = None;
    for c in calls {
        let result = c
            .await
            .map_err(|e| ApiError::internal(format!("webhook call failed: {e}")))
            .and_then(|r| r);
        if let Err(e) = result
            && first.is_none()
        {
            first = Some(e);
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Upstream never sends the admission configuration kinds to webhooks.
fn exempt(info: &ResourceInfo) -> bool {
    info.group == GROUP
        && matches!(
            info.kind,
            "ValidatingWebhookConfiguration"
                | "MutatingWebhookConfiguration"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
                | "MutatingAdmissionPolicy"
                | "MutatingAdmissionPolicyBinding"
        )
}

/// One webhook of a configuration.
#[derive(Debug, Clone)]
struct Hook {
    name: String,
    /// The name of its configuration.
    configuration: String,
    /// Of a `MutatingWebhookConfiguration`.
    mutating: bool,
    client: Result<ClientConfig, String>,
    rules: Vec<Rule>,
    /// `matchPolicy: Exact`.
    exact: bool,
    namespace_selector: Result<LabelSelector, String>,
    object_selector: Result<LabelSelector, String>,
    /// `failurePolicy: Fail` (the default).
    fail: bool,
    side_effects: Option<String>,
    timeout: Duration,
    review_versions: Vec<String>,
    /// `reinvocationPolicy: IfNeeded` (mutating only).
    reinvoke: bool,
    /// `matchConditions`: (name, CEL expression).
    match_conditions: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Rule {
    pub(crate) operations: Vec<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) versions: Vec<String>,
    pub(crate) resources: Vec<String>,
    pub(crate) scope: String,
}

impl Rule {
    /// A `RuleWithOperations` (or a policy's `NamedRuleWithOperations`) as written; `scope`
    /// defaults to `*`.
    pub(crate) fn parse(r: &Value) -> Rule {
        Rule {
            operations: strings(r.get("operations")),
            groups: strings(r.get("apiGroups")),
            versions: strings(r.get("apiVersions")),
            resources: strings(r.get("resources")),
            scope: r
                .get("scope")
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_string(),
        }
    }
}

/// The strings of a JSON list (none when absent).
pub(crate) fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

impl Hook {
    fn parse(w: &Value, configuration: &str, mutating: bool) -> Hook {
        let text = |k: &str| w.get(k).and_then(Value::as_str);
        let selector = |k: &str| LabelSelector::parse(&selector_text(w.get(k)));
        Hook {
            name: text("name").unwrap_or_default().to_string(),
            configuration: configuration.to_string(),
            mutating,
            client: ClientConfig::parse(w.get("clientConfig").unwrap_or(&Value::Null))
                .map_err(|e| e.to_string()),
            rules: w
                .get("rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(Rule::parse)
                .collect(),
            exact: text("matchPolicy") == Some("Exact"),
            namespace_selector: selector("namespaceSelector"),
            object_selector: selector("objectSelector"),
            fail: text("failurePolicy") != Some("Ignore"),
            side_effects: text("sideEffects").map(str::to_string),
            timeout: Duration::from_secs(
                w.get("timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(DEFAULT_TIMEOUT_SECONDS),
            ),
            review_versions: strings(w.get("admissionReviewVersions")),
            reinvoke: mutating && text("reinvocationPolicy") == Some("IfNeeded"),
            match_conditions: w
                .get("matchConditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    (f("name"), f("expression"))
                })
                .collect(),
        }
    }
}

/// Every webhook of the mutating or validating configurations: configurations by name,
/// webhooks in their order. From the watch cache (the store until it has started).
async fn hooks(state: &AppState, mutating: bool) -> Result<Arc<Vec<Hook>>, ApiError> {
    let plural = if mutating {
        "mutatingwebhookconfigurations"
    } else {
        "validatingwebhookconfigurations"
    };
    let info = REGISTRY
        .find(GROUP, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let prefix = info.prefix(None);
    let configs: Vec<Value> = match state
        .watch_cache
        .list(info, &prefix, false, None, 0)
        .await?
    {
        Some(list) => list.objects.iter().map(|(_, o)| o.to_value()).collect(),
        None => {
            let listed = state.store.list(&prefix, ListOptions::default()).await?;
            state.watch_cache.start(info, listed.revision);
            listed
                .kvs
                .iter()
                .map(decode_stored)
                .collect::<Result<_, _>>()?
        }
    };
    // Keys (`/registry/<prefix>/<name>`) are in name order already.
    Ok(Arc::new(
        configs
            .iter()
            .flat_map(|c| {
                c.get("webhooks")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|w| Hook::parse(w, object_meta_str(c, "name"), mutating))
            })
            .collect(),
    ))
}

/// What one admission is about.
pub(crate) struct Attrs<'a> {
    pub(crate) req: &'a Request,
    /// The resource as the request names it.
    pub(crate) info: &'a ResourceInfo,
    pub(crate) op: Operation,
    pub(crate) obj: Option<&'a Value>,
    pub(crate) old: Option<&'a Value>,
}

impl Attrs<'_> {
    pub(crate) fn is_namespace(&self) -> bool {
        self.info.group.is_empty() && self.info.plural == "namespaces"
    }

    /// Upstream's attribute namespace: a namespace's own name for a namespace.
    pub(crate) fn namespace(&self) -> String {
        if self.is_namespace() {
            let named = self.obj.or(self.old).map(|o| object_meta_str(o, "name"));
            return match named {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => self.req.name.clone(),
            };
        }
        self.req.namespace.clone()
    }

    /// The object's name: empty for a create with `generateName` (upstream names the request
    /// before the name is generated, though validating webhooks see the generated one in the
    /// object).
    pub(crate) fn name(&self) -> String {
        if !self.req.name.is_empty() {
            return self.req.name.clone();
        }
        match self.obj.or(self.old) {
            Some(o) if object_meta_str(o, "generateName").is_empty() => {
                object_meta_str(o, "name").to_string()
            }
            _ => String::new(),
        }
    }
}

/// The labels of the request's namespace, looked up once per admission.
#[derive(Default)]
struct NamespaceLabels(Option<BTreeMap<String, String>>);

/// Whether `rule` covers the request in resource (group, version, plural) at `subresource`.
pub(crate) fn rule_matches(rule: &Rule, attrs: &Attrs<'_>, target: &ResourceInfo) -> bool {
    let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
    if !any(&rule.operations, attrs.op.as_str())
        || !any(&rule.groups, target.group)
        || !any(&rule.versions, target.version)
    {
        return false;
    }
    let sub = attrs.req.subresource.as_str();
    let resource_ok = rule.resources.iter().any(|r| {
        let (res, rsub) = r.split_once('/').unwrap_or((r.as_str(), ""));
        (res == "*" || res == target.plural) && (rsub == "*" || rsub == sub)
    });
    if !resource_ok {
        return false;
    }
    let namespaced = !attrs.is_namespace() && !attrs.namespace().is_empty();
    match rule.scope.as_str() {
        "Namespaced" => namespaced,
        "Cluster" => !namespaced,
        _ => true,
    }
}

/// Upstream's `ShouldCallHook`: the version to send the object in when `hook` is to be
/// called (the request's, or an equivalent one its rules name), `None` when it is not.
async fn matches(
    state: &AppState,
    hook: &Hook,
    attrs: &Attrs<'_>,
    ns_labels: &mut NamespaceLabels,
) -> Result<Option<ResourceInfo>, ApiError> {
    let target = if hook
        .rules
        .iter()
        .any(|r| rule_matches(r, attrs, attrs.info))
    {
        attrs.info.clone()
    } else if hook.exact {
        return Ok(None);
    } else {
        let found = equivalents(state, attrs.info)
            .into_iter()
            .find(|e| hook.rules.iter().any(|r| rule_matches(r, attrs, e)));
        match found {
            Some(e) => e,
            None => return Ok(None),
        }
    };
    if !namespace_matches(state, hook, attrs, ns_labels).await? {
        return Ok(None);
    }
    let selector = hook
        .object_selector
        .as_ref()
        .map_err(|e| ApiError::internal(format!("invalid objectSelector: {e}")))?;
    if !selector.is_empty() {
        let matched =
            |o: Option<&Value>| o.is_some_and(|o| selector.matches(&crate::rest::object_labels(o)));
        if !(matched(attrs.obj) || matched(attrs.old)) {
            return Ok(None);
        }
    }
    Ok(Some(target))
}

/// The other served versions of `info`'s resource: the same storage (upstream's equivalent
/// resources for `matchPolicy: Equivalent`).
pub(crate) fn equivalents(state: &AppState, info: &ResourceInfo) -> Vec<ResourceInfo> {
    let prefix = info.prefix(None);
    let same = |r: &&ResourceInfo| {
        r.prefix(None) == prefix && !(r.group == info.group && r.version == info.version)
    };
    let mut out: Vec<ResourceInfo> = REGISTRY
        .groups
        .iter()
        .flat_map(|g| g.resources.iter())
        .filter(same)
        .cloned()
        .collect();
    if info.custom.is_some() {
        let snapshot = state.crds.snapshot();
        out.extend(
            snapshot
                .groups
                .iter()
                .flat_map(|g| g.resources.iter())
                .filter(same)
                .cloned(),
        );
    }
    out
}

/// [`served_as`], but for the object of a subresource of its own kind (a `Scale`, a
/// `Binding`, ...), which is the same in every version of the resource.
async fn object_as(
    state: &AppState,
    req: &Request,
    from: &ResourceInfo,
    to: &ResourceInfo,
    obj: Value,
) -> Result<Value, ApiError> {
    if subresource_kind(from, &req.subresource).is_some() {
        return Ok(obj);
    }
    served_as(state, from, to, obj).await
}

/// `obj`, in `from`'s form, converted to `to`'s (the same storage): a custom resource by its
/// CRD's conversion (its webhook, or the `apiVersion` alone), a built-in through its stored
/// form.
pub(crate) async fn served_as(
    state: &AppState,
    from: &ResourceInfo,
    to: &ResourceInfo,
    obj: Value,
) -> Result<Value, ApiError> {
    if from.group == to.group && from.version == to.version {
        return Ok(obj);
    }
    if to.custom.is_some() {
        return crate::rest::served_object(state, to, obj).await;
    }
    let stored = match from.conversion {
        Some(c) => (c.to_storage)(obj),
        None => obj,
    };
    Ok(crate::rest::served_form(to, stored))
}

async fn namespace_matches(
    state: &AppState,
    hook: &Hook,
    attrs: &Attrs<'_>,
    ns_labels: &mut NamespaceLabels,
) -> Result<bool, ApiError> {
    let selector = hook
        .namespace_selector
        .as_ref()
        .map_err(|e| ApiError::internal(format!("invalid namespaceSelector: {e}")))?;
    let namespace = attrs.namespace();
    if namespace.is_empty() && !attrs.is_namespace() {
        // Cluster-scoped objects other than namespaces are never exempted.
        return Ok(true);
    }
    if selector.is_empty() {
        return Ok(true);
    }
    if ns_labels.0.is_none() {
        let labels = if attrs.is_namespace()
            && attrs.req.subresource.is_empty()
            && matches!(attrs.op, Operation::Create | Operation::Update)
        {
            // The namespace being written: its new labels.
            attrs
                .obj
                .map(crate::rest::object_labels)
                .unwrap_or_default()
        } else {
            namespace_labels(state, &namespace).await?
        };
        ns_labels.0 = Some(labels);
    }
    Ok(ns_labels.0.as_ref().is_some_and(|l| selector.matches(l)))
}

/// A namespace's labels from the watch cache (the store when its cache is not running).
async fn namespace_labels(
    state: &AppState,
    name: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let info = REGISTRY
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
    let key = info.key(None, name);
    let (running, cached) = match state.watch_cache.list(info, &key, true, None, 0).await? {
        Some(list) => (true, list.objects.first().map(|(_, o)| o.to_value())),
        None => (false, None),
    };
    let ns = match cached {
        Some(ns) => Some(ns),
        // Not cached (yet): the store decides, as upstream's live lookup.
        None => {
            let (revision, kv) = state.store.get(&key, 0).await?;
            if !running {
                state.watch_cache.start(info, revision);
            }
            kv.map(|kv| decode_stored(&kv)).transpose()?
        }
    };
    let ns = ns.ok_or_else(|| ApiError::not_found(info, name))?;
    Ok(crate::rest::object_labels(&ns))
}

/// A webhook's verified answer.
#[derive(Debug)]
struct Answer {
    /// The JSON patch, if the webhook sent one.
    patch: Option<Value>,
}

/// A failed call (upstream's `ErrCallingWebhook`), for `failurePolicy` to decide about: the
/// reason, and the status code upstream's metrics record for it (`None`: not a call, no
/// metrics, as a match condition that fails to evaluate).
#[derive(Debug)]
struct Failure {
    reason: String,
    code: Option<u16>,
}

impl Failure {
    fn new(reason: impl Into<String>, code: u16) -> Failure {
        Failure {
            reason: reason.into(),
            code: Some(code),
        }
    }
}

/// What calling one webhook came to.
#[derive(Debug)]
enum Outcome {
    Allowed(Answer),
    /// `allowed: false` (upstream's `ErrWebhookRejection`): its Status.
    Denied(ApiError),
    Failed(Failure),
    /// Any other error (upstream's apiserver-internal errors, such as the dry-run refusal).
    Internal(ApiError),
}

/// A review ready to send, or why none is sent.
enum Prepared {
    /// A match condition is false: the webhook is not called.
    Skip,
    Ready(Ready),
    Done(Outcome),
}

struct Ready {
    client: ClientConfig,
    version: &'static str,
    uid: String,
    review: Value,
}

/// Which call of a webhook this is, for the audit annotations upstream keys by round and
/// index (`mutation.webhook.admission.k8s.io/round_0_index_2`).
#[derive(Clone, Copy)]
struct Invocation<'a> {
    round: usize,
    /// Mutating: the webhook's index among all; validating: among those that matched.
    index: usize,
    audit: Option<&'a crate::audit::Slot>,
}

impl Invocation<'_> {
    fn annotate(&self, key: String, value: String, level: crate::audit::Level) {
        if let Some(slot) = self.audit {
            slot.annotate(key, value, level);
        }
    }

    /// `mutation.webhook.admission.k8s.io/round_<r>_index_<i>`.
    fn mutated(&self, hook: &Hook, mutated: bool) {
        let value = format!(
            "{{\"configuration\":{},\"webhook\":{},\"mutated\":{mutated}}}",
            Value::String(hook.configuration.clone()),
            Value::String(hook.name.clone())
        );
        self.annotate(
            format!(
                "mutation.webhook.admission.k8s.io/round_{}_index_{}",
                self.round, self.index
            ),
            value,
            crate::audit::Level::Metadata,
        );
    }

    /// `patch.webhook.admission.k8s.io/round_<r>_index_<i>` (at level Request).
    fn patched(&self, hook: &Hook, patch: &Value) {
        let value = format!(
            "{{\"configuration\":{},\"webhook\":{},\"patch\":{patch},\"patchType\":\"JSONPatch\"}}",
            Value::String(hook.configuration.clone()),
            Value::String(hook.name.clone())
        );
        self.annotate(
            format!(
                "patch.webhook.admission.k8s.io/round_{}_index_{}",
                self.round, self.index
            ),
            value,
            crate::audit::Level::Request,
        );
    }

    /// `failed-open.{mutation,validating}.webhook.admission.k8s.io/round_<r>_index_<i>`.
    fn failed_open(&self, hook: &Hook, mutating: bool) {
        let kind = if mutating { "mutation" } else { "validating" };
        self.annotate(
            format!(
                "failed-open.{kind}.webhook.admission.k8s.io/round_{}_index_{}",
                self.round, self.index
            ),
            hook.name.clone(),
            crate::audit::Level::Metadata,
        );
    }
}

/// Builds the review for `hook`, or the error that stops the request (upstream's
/// `ErrCallingWebhook` for `failurePolicy`, the dry-run refusal). A conversion of the
/// object that fails is the request's error (no call was made).
async fn prepare(
    state: &AppState,
    hook: &Hook,
    attrs: &Attrs<'_>,
    target: &ResourceInfo,
) -> Result<Prepared, ApiError> {
    // The first of the webhook's versions that rk3s speaks (upstream goes by its order).
    let Some(version) = hook
        .review_versions
        .iter()
        .find_map(|w| REVIEW_VERSIONS.iter().find(|v| **v == w.as_str()))
    else {
        return Ok(Prepared::Done(Outcome::Failed(Failure::new(
            "could not create admission objects: webhook does not accept known \
             AdmissionReview versions",
            400,
        ))));
    };
    let uid = crate::rest::new_uid();
    let mut objects = [Value::Null, Value::Null];
    for (slot, o) in objects.iter_mut().zip([attrs.obj, attrs.old]) {
        if let Some(o) = o {
            *slot = object_as(state, attrs.req, attrs.info, target, o.clone()).await?;
        }
    }
    let [object, old_object] = objects;
    let review = review(version, &uid, attrs, target, object, old_object);
    match match_conditions(&hook.match_conditions, &review["request"]) {
        Ok(true) => {}
        Ok(false) => return Ok(Prepared::Skip),
        Err(reason) => {
            return Ok(Prepared::Done(Outcome::Failed(Failure {
                reason,
                code: None,
            })));
        }
    }
    if attrs.req.dry_run {
        match hook.side_effects.as_deref() {
            Some("None" | "NoneOnDryRun") => {}
            None => {
                return Ok(Prepared::Done(Outcome::Failed(Failure::new(
                    "Webhook SideEffects is nil",
                    400,
                ))));
            }
            Some(_) => {
                return Ok(Prepared::Done(Outcome::Internal(ApiError::bad_request(
                    format!("admission webhook {:?} does not support dry run", hook.name),
                ))));
            }
        }
    }
    let client = match &hook.client {
        Ok(c) => c.clone(),
        Err(e) => {
            return Ok(Prepared::Done(Outcome::Failed(Failure::new(
                format!("could not get REST client: {e}"),
                if hook.mutating { 500 } else { 400 },
            ))));
        }
    };
    Ok(Prepared::Ready(Ready {
        client,
        version,
        uid,
        review,
    }))
}

/// Upstream's `matchConditions`: CEL expressions over `object`, `oldObject` and `request`
/// (the review's request). `Ok(false)` as soon as one is false; otherwise the errors of those
/// that failed (for `failurePolicy`), else `Ok(true)`.
fn match_conditions(conditions: &[(String, String)], request: &Value) -> Result<bool, String> {
    if conditions.is_empty() {
        return Ok(true);
    }
    let mut ctx = cel::Context::with_env(crate::crd::cel::ENV.clone());
    ctx.add_variable_from_value("object", crate::crd::cel::to_cel(&request["object"]));
    ctx.add_variable_from_value("oldObject", crate::crd::cel::to_cel(&request["oldObject"]));
    ctx.add_variable_from_value("request", crate::crd::cel::to_cel(request));
    let mut errors = Vec::new();
    for (_, expression) in conditions {
        let result = crate::crd::cel::ENV
            .compile(expression)
            .map_err(|e| e.to_string())
            .and_then(|p| p.execute(&ctx).map_err(|e| e.to_string()));
        match result {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(false),
            Ok(other) => errors.push(format!(
                "expression '{expression}' resulted in error: no such overload: {other:?} is not \
                 a bool"
            )),
            Err(e) => errors.push(format!("expression '{expression}' resulted in error: {e}")),
        }
    }
    match errors.len() {
        0 => Ok(true),
        1 => Err(errors.concat()),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

/// The `AdmissionReview` upstream's `CreateAdmissionObjects` builds (`object`,
/// `old_object`: in `target`'s version, `null` when absent).
pub(crate) fn review(
    version: &str,
    uid: &str,
    attrs: &Attrs<'_>,
    target: &ResourceInfo,
    object: Value,
    old_object: Value,
) -> Value {
    let req = attrs.req;
    let info = attrs.info;
    let mut user = json!({});
    if !req.user.name.is_empty() {
        user["username"] = json!(req.user.name);
    }
    if !req.user.uid.is_empty() {
        user["uid"] = json!(req.user.uid);
    }
    if !req.user.groups.is_empty() {
        user["groups"] = json!(req.user.groups);
    }
    if !req.user.extra.is_empty() {
        user["extra"] = json!(req.user.extra);
    }
    let own_kind = subresource_kind(info, &req.subresource);
    let mut request = json!({
        "uid": uid,
        "kind": {"group": target.group, "version": target.version, "kind": target.kind},
        "resource": {"group": target.group, "version": target.version, "resource": target.plural},
        "requestKind": {"group": info.group, "version": info.version, "kind": info.kind},
        "requestResource": {"group": info.group, "version": info.version, "resource": info.plural},
        "operation": attrs.op.as_str(),
        "userInfo": user,
        "object": object,
        "oldObject": old_object,
        "dryRun": req.dry_run,
        "options": req.options,
    });
    if let Some(kind) = own_kind {
        request["kind"] = kind.clone();
        request["requestKind"] = kind;
    }
    if !req.subresource.is_empty() {
        request["subResource"] = json!(req.subresource);
        request["requestSubResource"] = json!(req.subresource);
    }
    let name = attrs.name();
    if !name.is_empty() {
        request["name"] = json!(name);
    }
    let namespace = attrs.namespace();
    if !namespace.is_empty() {
        request["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": format!("admission.k8s.io/{version}"),
        "kind": "AdmissionReview",
        "request": request,
    })
}

/// Sends a prepared review and reads the answer; records upstream's metrics of the call
/// (`apiserver_admission_webhook_*`) and applies `failurePolicy` to failures. `Ok(None)`:
/// nothing to apply (not called, or an `Ignore` webhook that failed).
#[allow(clippy::too_many_arguments)]
async fn finish(
    state: &AppState,
    hook: &Hook,
    req: &Request,
    op: Operation,
    prepared: Prepared,
    mutating: bool,
    at: Invocation<'_>,
    started: Instant,
) -> Result<Option<Answer>, ApiError> {
    let outcome = match prepared {
        Prepared::Skip => return Ok(None),
        Prepared::Done(outcome) => outcome,
        Prepared::Ready(ready) => send(state, hook, req, ready, mutating, at).await,
    };
    let step = if mutating { "admit" } else { "validating" };
    let (name, operation) = (hook.name.as_str(), op.as_str());
    let metrics = &state.metrics;
    let elapsed = started.elapsed();
    match &outcome {
        Outcome::Allowed(_) => {
            metrics.observe_webhook(name, step, operation, false, 200, elapsed);
        }
        Outcome::Denied(e) => {
            metrics.observe_webhook_rejection(name, step, operation, "no_error", e.code);
            metrics.observe_webhook(name, step, operation, true, e.code, elapsed);
        }
        Outcome::Failed(Failure {
            code: Some(code), ..
        }) => {
            if hook.fail {
                metrics.observe_webhook_rejection(
                    name,
                    step,
                    operation,
                    "calling_webhook_error",
                    *code,
                );
            }
            metrics.observe_webhook(name, step, operation, hook.fail, *code, elapsed);
        }
        Outcome::Failed(_) => {}
        Outcome::Internal(_) => {
            metrics.observe_webhook_rejection(name, step, operation, "apiserver_internal_error", 0);
            metrics.observe_webhook(name, step, operation, true, 0, elapsed);
        }
    }
    if mutating && !matches!(outcome, Outcome::Allowed(_)) {
        at.mutated(hook, false);
    }
    match outcome {
        Outcome::Allowed(answer) => Ok(Some(answer)),
        Outcome::Denied(e) | Outcome::Internal(e) => Err(e),
        Outcome::Failed(Failure { reason, .. }) if hook.fail => {
            tracing::warn!(webhook = %hook.name, %reason, "failed calling webhook, failing closed");
            Err(ApiError::internal(format!(
                "failed calling webhook {:?}: {reason}",
                hook.name
            )))
        }
        Outcome::Failed(Failure { reason, .. }) => {
            tracing::warn!(webhook = %hook.name, %reason, "failed calling webhook, failing open");
            at.failed_open(hook, mutating);
            Ok(None)
        }
    }
}

/// One call, its answer verified (upstream's `callHook`). The status codes of failures are
/// upstream's: the webhook's own HTTP status, else 400 (validating) or 503 (mutating) for a
/// call that failed on the way, 503 for an answer that does not verify.
async fn send(
    state: &AppState,
    hook: &Hook,
    req: &Request,
    ready: Ready,
    mutating: bool,
    at: Invocation<'_>,
) -> Outcome {
    let on_the_way = if mutating { 503 } else { 400 };
    let answer = match ready.client.call(state, &ready.review, hook.timeout).await {
        Ok(a) => a,
        Err(WebhookError::Resolve(why)) => {
            // Resolving the service happens while dialling upstream: Go's `url.Error`.
            let url = ready.client.display_url(hook.timeout);
            return Outcome::Failed(Failure::new(
                format!("failed to call webhook: Post \"{url}\": {why}"),
                on_the_way,
            ));
        }
        Err(e) => {
            let code = e.status().unwrap_or(on_the_way);
            return Outcome::Failed(Failure::new(format!("failed to call webhook: {e}"), code));
        }
    };
    let response = match verify(ready.version, &ready.uid, mutating, &answer) {
        Ok(r) => r,
        Err(why) => {
            return Outcome::Failed(Failure::new(
                format!("received invalid webhook response: {why}"),
                503,
            ));
        }
    };
    // `auditAnnotations`: on the request's audit event as `<webhook name>/<key>`.
    if let Some(notes) = response.get("auditAnnotations").and_then(Value::as_object) {
        for (k, v) in notes {
            if let Some(v) = v.as_str() {
                at.annotate(
                    format!("{}/{k}", hook.name),
                    v.to_string(),
                    crate::audit::Level::Metadata,
                );
            }
        }
    }
    let warnings: Vec<String> = strings(response.get("warnings"));
    if !warnings.is_empty() {
        req.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(warnings);
    }
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        return Outcome::Denied(denied(&hook.name, response.get("status")));
    }
    let Some(patch) = response
        .get("patch")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    else {
        return Outcome::Allowed(Answer { patch: None });
    };
    let patch_type = response
        .get("patchType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let bytes = match base64::engine::general_purpose::STANDARD.decode(patch) {
        Ok(b) => b,
        Err(e) => {
            return Outcome::Failed(Failure::new(
                format!("received invalid webhook response: response.patch: {e}"),
                503,
            ));
        }
    };
    let patch: Value = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return Outcome::Internal(ApiError::internal(e)),
    };
    if !patch.is_array() {
        return Outcome::Internal(ApiError::internal(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
        ));
    }
    if patch.as_array().is_some_and(Vec::is_empty) {
        return Outcome::Allowed(Answer { patch: None });
    }
    if patch_type != "JSONPatch" {
        return Outcome::Failed(Failure::new(
            format!("unsupported patch type {patch_type:?}"),
            400,
        ));
    }
    Outcome::Allowed(Answer { patch: Some(patch) })
}

/// Upstream's `VerifyAdmissionResponse`: the `response` of a well-formed answer.
fn verify(version: &str, uid: &str, mutating: bool, answer: &Value) -> Result<Value, String> {
    let response = answer
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("webhook response was absent")?;
    let patch = response.get("patch").and_then(Value::as_str).unwrap_or("");
    let patch_type = response
        .get("patchType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if version == "v1" {
        let got = response.get("uid").and_then(Value::as_str).unwrap_or("");
        if got != uid {
            return Err(format!("expected response.uid={uid:?}, got {got:?}"));
        }
        let api_version = answer
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = answer.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
            let gv = if api_version.contains('/') {
                api_version.to_string()
            } else {
                format!("/{api_version}")
            };
            return Err(format!(
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got \
                 {gv}, Kind={kind}"
            ));
        }
        if mutating && !patch.is_empty() && patch_type.is_empty() {
            return Err("webhook returned response.patch but not response.patchType".into());
        }
        if mutating && patch.is_empty() && !patch_type.is_empty() {
            return Err("webhook returned response.patchType but not response.patch".into());
        }
    }
    if !mutating && !patch.is_empty() {
        return Err("validating webhook may not return response.patch".into());
    }
    if !mutating && !patch_type.is_empty() {
        return Err("validating webhook may not return response.patchType".into());
    }
    Ok(response.clone())
}

/// Upstream's `ToStatusErr`: a denial as the webhook's `status`, at least 400.
fn denied(name: &str, status: Option<&Value>) -> ApiError {
    let text = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c))
        .unwrap_or(400);
    let by = format!("admission webhook {name:?} denied the request");
    let message = match (text("message"), text("reason")) {
        (m, _) if !m.is_empty() => format!("{by}: {m}"),
        (_, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    ApiError {
        details: status.and_then(|s| s.get("details")).cloned(),
        ..ApiError::new(code, known_reason(text("reason")), message)
    }
}

/// A `StatusReason` upstream defines (the `&'static str` an [`ApiError`] carries); others are
/// dropped (the Status then has no reason, as upstream's `StatusReasonUnknown`).
fn known_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "StoreReadError",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    KNOWN.iter().find(|k| **k == reason).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, sub: &str, ns: &str) -> Request {
        Request {
            user: crate::auth::UserInfo::new("alice", vec!["g".into()]),
            method,
            group: String::new(),
            version: "v1".into(),
            plural: "pods".into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: "p".into(),
            dry_run: false,
            options: json!({}),
            warnings: Mutex::new(Vec::new()),
        }
    }

    fn rule(ops: &[&str], resources: &[&str], scope: &str) -> Rule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Rule {
            operations: v(ops),
            groups: vec![String::new()],
            versions: vec!["v1".into()],
            resources: v(resources),
            scope: scope.into(),
        }
    }

    #[test]
    fn rules_match_resources_subresources_operations_and_scope() {
        let pods = REGISTRY.find("", "v1", "pods").expect("ok");
        let main = request(Method::PUT, "", "default");
        let status = request(Method::PUT, "status", "default");
        let attrs = |req| Attrs {
            req,
            info: pods,
            op: Operation::Update,
            obj: None,
            old: None,
        };
        let cases = [
            (rule(&["UPDATE"], &["pods"], "*"), true, false),
            (rule(&["*"], &["*"], "*"), true, false),
            (rule(&["*"], &["*/*"], "*"), true, true),
            (rule(&["*"], &["pods/status"], "*"), false, true),
            (rule(&["*"], &["pods/*"], "*"), true, true),
            (rule(&["*"], &["*/status"], "*"), false, true),
            (rule(&["CREATE"], &["pods"], "*"), false, false),
            (rule(&["*"], &["pods"], "Namespaced"), true, false),
            (rule(&["*"], &["pods"], "Cluster"), false, false),
        ];
        for (r, on_main, on_status) in cases {
            assert_eq!(rule_matches(&r, &attrs(&main), pods), on_main, "{r:?}");
            assert_eq!(rule_matches(&r, &attrs(&status), pods), on_status, "{r:?}");
        }
    }

    fn target(plural: &str, ns: Option<&str>, name: &str, sub: &str) -> Target {
        let info = REGISTRY.find("", "v1", plural).expect("registered");
        Target {
            info: std::borrow::Cow::Borrowed(info),
            namespace: ns.map(str::to_string),
            name: Some(name.into()),
            subresource: Some(sub.into()),
            watch_path: false,
        }
    }

    #[test]
    fn connects_carry_upstreams_options_and_match_subresource_rules() {
        let uri = |s: &str| s.parse::<Uri>().expect("uri");
        let exec = target("pods", Some("ns"), "p", "exec");
        let o = connect_options(
            &exec,
            &uri("/api/v1/namespaces/ns/pods/p/exec?command=ls&command=-l&container=c&stdin=false&stdout=true&stderr=1&tty="),
        )
        .expect("options");
        assert_eq!(
            o,
            json!({"kind": "PodExecOptions", "apiVersion": "v1", "command": ["ls", "-l"],
                "container": "c", "stdout": true, "stderr": true, "tty": true})
        );
        assert_eq!(
            connect_query(&o),
            "stdout=true&stderr=true&tty=true&container=c&command=ls&command=-l"
        );
        let attach = target("pods", Some("ns"), "p", "attach");
        let o =
            connect_options(&attach, &uri("/api/v1/namespaces/ns/pods/p/attach")).expect("options");
        assert_eq!(o, json!({"kind": "PodAttachOptions", "apiVersion": "v1"}));
        let proxy = target("pods", Some("ns"), "p:80", "proxy");
        let o = connect_options(&proxy, &uri("/api/v1/namespaces/ns/pods/p:80/proxy/a/b/"))
            .expect("options");
        assert_eq!(
            o,
            json!({"kind": "PodProxyOptions", "apiVersion": "v1", "path": "/a/b/"})
        );
        let node = target("nodes", None, "n", "proxy");
        let o = connect_options(&node, &uri("/api/v1/nodes/n/proxy")).expect("options");
        assert_eq!(o, json!({"kind": "NodeProxyOptions", "apiVersion": "v1"}));
        let log = target("pods", Some("ns"), "p", "log");
        assert!(connect_options(&log, &uri("/api/v1/namespaces/ns/pods/p/log")).is_none());
        let user = crate::auth::UserInfo::new("alice", vec![]);
        assert!(Request::connect(&log, &user).is_none());

        // `pods/*` and `*/*` rules match a CONNECT of `pods/exec`; `pods` does not.
        let req = Request::connect(&exec, &user).expect("a connect");
        let pods = REGISTRY.find("", "v1", "pods").expect("ok");
        assert!(req.admits(pods, Operation::Connect));
        assert!(!req.admits(pods, Operation::Create));
        let attrs = Attrs {
            req: &req,
            info: pods,
            op: Operation::Connect,
            obj: None,
            old: None,
        };
        assert!(rule_matches(
            &rule(&["CONNECT"], &["pods/*"], "*"),
            &attrs,
            pods
        ));
        assert!(rule_matches(&rule(&["*"], &["*/*"], "*"), &attrs, pods));
        assert!(rule_matches(
            &rule(&["CONNECT"], &["pods/exec"], "*"),
            &attrs,
            pods
        ));
        assert!(!rule_matches(
            &rule(&["CONNECT"], &["pods"], "*"),
            &attrs,
            pods
        ));
        assert!(!rule_matches(
            &rule(&["CREATE"], &["pods/*"], "*"),
            &attrs,
            pods
        ));
        assert_eq!(
            subresource_kind(pods, "exec"),
            Some(json!({"group": "", "version": "v1", "kind": "PodExecOptions"}))
        );
    }

    #[test]
    fn subresources_of_their_own_kind_are_admitted_as_upstream() {
        let pods = REGISTRY.find("", "v1", "pods").expect("ok");
        let binding = request(Method::POST, "binding", "ns");
        assert!(binding.admits(pods, Operation::Create));
        assert!(!binding.admits(pods, Operation::Update));
        assert_eq!(
            subresource_kind(pods, "binding"),
            Some(json!({"group": "", "version": "v1", "kind": "Binding"}))
        );
        let deployments = REGISTRY.find("apps", "v1", "deployments").expect("ok");
        let mut scale = request(Method::PATCH, "scale", "ns");
        scale.group = "apps".into();
        scale.plural = "deployments".into();
        assert!(scale.admits(deployments, Operation::Update));
        assert_eq!(
            subresource_kind(deployments, "scale"),
            Some(json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}))
        );
        let sas = REGISTRY.find("", "v1", "serviceaccounts").expect("ok");
        let mut token = request(Method::POST, "token", "ns");
        token.plural = "serviceaccounts".into();
        assert!(token.admits(sas, Operation::Create));
        assert_eq!(
            subresource_kind(sas, "token"),
            Some(
                json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"})
            )
        );
        let mut obj = json!({"target": {"name": "n"}});
        typed_body(&mut obj, "v1", "Binding", Some("ns"));
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"namespace": "ns"},
                "target": {"name": "n"}})
        );
    }

    #[test]
    fn a_denial_is_worded_and_coded_as_upstream() {
        let e = denied(
            "v.example.com",
            Some(&json!({"message": "no", "code": 403})),
        );
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "admission webhook \"v.example.com\" denied the request: no"
        );
        let e = denied("v", Some(&json!({"code": 200, "reason": "Forbidden"})));
        assert_eq!((e.code, e.reason), (400, "Forbidden"));
        assert_eq!(
            e.message,
            "admission webhook \"v\" denied the request: Forbidden"
        );
        let e = denied("v", None);
        assert_eq!(
            e.message,
            "admission webhook \"v\" denied the request without explanation"
        );
    }

    #[test]
    fn answers_are_verified_as_upstream() {
        let ok = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "u", "allowed": true}});
        assert!(verify("v1", "u", false, &ok).is_ok());
        assert_eq!(
            verify("v1", "x", false, &ok).expect_err("an error"),
            "expected response.uid=\"x\", got \"u\""
        );
        assert_eq!(
            verify("v1", "u", false, &json!({})).expect_err("an error"),
            "webhook response was absent"
        );
        let bad_kind = json!({"apiVersion": "v1", "kind": "Status", "response": {"uid": "u"}});
        assert_eq!(
            verify("v1", "u", false, &bad_kind).expect_err("an error"),
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got /v1, \
             Kind=Status"
        );
        let patch = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": "u", "allowed": true, "patch": "W10="}});
        assert_eq!(
            verify("v1", "u", true, &patch).expect_err("an error"),
            "webhook returned response.patch but not response.patchType"
        );
        assert_eq!(
            verify("v1", "u", false, &patch).expect_err("an error"),
            "validating webhook may not return response.patch"
        );
        // v1beta1 answers are not checked for uid or kind.
        let beta = json!({"response": {"allowed": true}});
        assert!(verify("v1beta1", "u", false, &beta).is_ok());
    }
}
