//! The audit log: upstream's audit `Policy` (`audit.k8s.io/v1`, `--audit-policy-file`) decides
//! per request a level (`None`, `Metadata`, `Request`, `RequestResponse`); events are written as
//! upstream's `audit.k8s.io/v1` `Event` JSON lines to `--audit-log-path` (`-`: stdout), with
//! upstream's size-based rotation (`--audit-log-maxsize` MB, `--audit-log-maxbackup` files,
//! `--audit-log-maxage` days; backups named `<name>-<time>.<ext>` as lumberjack does). Off
//! unless both a policy and a path are configured.
//!
//! [`middleware`] wraps the authentication middleware: that one records who the request was
//! from (and whom it impersonated) and the authorization decision in the request's
//! [`Slot`]; this one, once the handler answered, evaluates the policy and writes the
//! `RequestReceived` and `ResponseComplete` events (watches: `ResponseStarted` when the
//! response starts, `ResponseComplete` when its stream ends). Handlers add annotations
//! through [`current`] (admission webhooks: their `auditAnnotations`, the mutation, patch and
//! failed-open annotations), each kept on events of its level and above. Requests that fail
//! authentication are logged too (stage `ResponseStarted`, code 401, no user), as upstream's
//! failed-authentication audit does.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use crate::auth::{Attributes, UserInfo};
use crate::server::AppState;

/// Audit levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

/// Audit stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

/// Upstream's audit `Policy` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: bool,
}

/// One rule; the first that matches a request gives its level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub level: Level,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub user_groups: Vec<String>,
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
    #[serde(default)]
    pub omit_managed_fields: Option<bool>,
}

/// `resources[]` of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResources {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
}

/// Why the audit configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit policy {}: {reason}", path.display())]
    Policy { path: PathBuf, reason: String },
    #[error("audit log {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Policy {
    /// Reads a policy file (YAML or JSON) and checks it.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let err = |reason: String| AuditError::Policy {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let policy: Policy = serde_yaml::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        if policy.kind != "Policy" {
            return Err(err(format!("kind: Invalid value: {:?}", policy.kind)));
        }
        if policy.api_version != "audit.k8s.io/v1" {
            return Err(err(format!(
                "apiVersion: Invalid value: {:?}: must be audit.k8s.io/v1",
                policy.api_version
            )));
        }
        for (i, r) in policy.rules.iter().enumerate() {
            if !r.non_resource_urls.is_empty()
                && (!r.resources.is_empty() || !r.namespaces.is_empty())
            {
                return Err(err(format!(
                    "rules[{i}].nonResourceURLs: Invalid value: rules cannot apply to both regular resources and non-resource URLs"
                )));
            }
        }
        Ok(policy)
    }

    /// The level and omitted stages for a request, as upstream's policy checker: the first
    /// matching rule, `None` when none matches.
    fn evaluate(&self, user: Option<&UserInfo>, attrs: &Attributes) -> (Level, Vec<Stage>, bool) {
        for rule in &self.rules {
            if rule.matches(user, attrs) {
                let mut omit = self.omit_stages.clone();
                omit.extend(rule.omit_stages.iter().copied());
                let omit_managed = rule.omit_managed_fields.unwrap_or(self.omit_managed_fields);
                return (rule.level, omit, omit_managed);
            }
        }
        (Level::None, Vec::new(), false)
    }
}

impl PolicyRule {
    fn matches(&self, user: Option<&UserInfo>, attrs: &Attributes) -> bool {
        if !self.users.is_empty() && !user.is_some_and(|u| self.users.contains(&u.name)) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !user.is_some_and(|u| u.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&attrs.verb) {
            return false;
        }
        if !self.resources.is_empty() || !self.namespaces.is_empty() {
            return self.matches_resource(attrs);
        }
        if !self.non_resource_urls.is_empty() {
            return !attrs.resource_request
                && self
                    .non_resource_urls
                    .iter()
                    .any(|u| match u.strip_suffix('*') {
                        Some(prefix) => attrs.path.starts_with(prefix),
                        None => *u == attrs.path,
                    });
        }
        true
    }

    fn matches_resource(&self, attrs: &Attributes) -> bool {
        if !attrs.resource_request {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&attrs.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if attrs.subresource.is_empty() {
            attrs.resource.clone()
        } else {
            format!("{}/{}", attrs.resource, attrs.subresource)
        };
        self.resources.iter().any(|gr| {
            gr.group == attrs.api_group
                && (gr.resources.is_empty()
                    || gr.resources.iter().any(|res| {
                        (gr.resource_names.is_empty() || gr.resource_names.contains(&attrs.name))
                            && (*res == combined
                                || res == "*"
                                || (!attrs.subresource.is_empty()
                                    && res.strip_prefix("*/") == Some(attrs.subresource.as_str()))
                                || res.strip_suffix("/*") == Some(attrs.resource.as_str()))
                    }))
        })
    }
}

/// Where events go, with lumberjack-style rotation.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    max_size: u64,
    max_backups: usize,
    max_age_days: u64,
}

impl Sink {
    fn open(
        path: &Path,
        max_size_mb: u64,
        max_backups: usize,
        max_age_days: u64,
    ) -> Result<Self, AuditError> {
        let mut sink = Sink {
            path: path.to_path_buf(),
            file: None,
            size: 0,
            max_size: max_size_mb.saturating_mul(1024 * 1024),
            max_backups,
            max_age_days,
        };
        if path != Path::new("-") {
            sink.reopen().map_err(|source| AuditError::Log {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(sink)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            return std::io::stdout().lock().write_all(line);
        }
        if self.max_size > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(line)?;
            self.size += line.len() as u64;
        }
        Ok(())
    }

    /// Renames the log to `<stem>-<UTC time>.<ext>`, opens a new one, prunes old backups.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let now = time::OffsetDateTime::now_utc();
        let stamp = format!(
            "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}.{:03}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond()
        );
        let backup = self.path.with_file_name(format!("{stem}-{stamp}{ext}"));
        std::fs::rename(&self.path, &backup)?;
        self.reopen()?;
        self.prune(&stem, &ext);
        Ok(())
    }

    fn prune(&self, stem: &str, ext: &str) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let prefix = format!("{stem}-");
        let mut backups: Vec<(String, PathBuf, std::time::SystemTime)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name.starts_with(&prefix) && name.ends_with(ext)).then(|| {
                    let modified = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                    (name, e.path(), modified)
                })
            })
            .collect();
        // Newest first (the names sort by time).
        backups.sort_by(|a, b| b.0.cmp(&a.0));
        let max_age = std::time::Duration::from_secs(self.max_age_days * 24 * 3600);
        for (i, (_, path, modified)) in backups.iter().enumerate() {
            let too_many = self.max_backups > 0 && i >= self.max_backups;
            let too_old =
                self.max_age_days > 0 && modified.elapsed().is_ok_and(|age| age > max_age);
            if too_many || too_old {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Audit settings: the policy file and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditConfig {
    /// `--audit-policy-file`.
    pub policy_file: Option<PathBuf>,
    /// `--audit-log-path` (`-`: standard output).
    pub log_path: Option<PathBuf>,
    /// `--audit-log-maxage`: days to keep rotated files (0: no limit).
    pub max_age_days: u64,
    /// `--audit-log-maxbackup`: rotated files to keep (0: no limit).
    pub max_backups: usize,
    /// `--audit-log-maxsize`: megabytes before the log is rotated (0: never).
    pub max_size_mb: u64,
}

/// The audit backend: a policy and where its events go.
#[derive(Debug)]
pub struct Audit {
    policy: Policy,
    sink: Mutex<Sink>,
}

impl Audit {
    /// The audit log of `config`; `None` unless both a policy file and a log path are set
    /// (upstream logs nothing without a policy).
    pub fn from_config(config: &AuditConfig) -> Result<Option<Self>, AuditError> {
        let (Some(policy), Some(path)) = (&config.policy_file, &config.log_path) else {
            return Ok(None);
        };
        Ok(Some(Audit {
            policy: Policy::load(policy)?,
            sink: Mutex::new(Sink::open(
                path,
                config.max_size_mb,
                config.max_backups,
                config.max_age_days,
            )?),
        }))
    }

    fn write(&self, event: &Value) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = sink.write(&line) {
            tracing::warn!(error = %e, path = %sink.path.display(), "cannot write the audit log");
        }
    }
}

/// What the authentication middleware learned about a request, for the audit event.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// The authenticated user (`None`: authentication failed).
    pub(crate) user: Option<UserInfo>,
    /// The user the request impersonated.
    pub(crate) impersonated: Option<UserInfo>,
    /// The authorization decision, once made.
    pub(crate) allowed: Option<bool>,
    /// Annotations admission added (key, value, the lowest level whose events carry it); the
    /// first value of a key stays, as upstream's `AddAnnotation`.
    pub(crate) annotations: Vec<(String, String, Level)>,
}

/// Shared between the audit and authentication middlewares of one request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slot(pub(crate) Arc<Mutex<Record>>);

impl Slot {
    pub(crate) fn update(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Adds an annotation to the request's event (kept when the key has none yet).
    pub(crate) fn annotate(&self, key: String, value: String, level: Level) {
        self.update(|r| {
            if !r.annotations.iter().any(|(k, _, _)| *k == key) {
                r.annotations.push((key, value, level));
            }
        });
    }
}

tokio::task_local! {
    static CURRENT: Slot;
}

/// The audit record of the request being served (`None` when audit is off): what the
/// handlers (admission webhooks) annotate. Tasks they spawn must take it along.
pub(crate) fn current() -> Option<Slot> {
    CURRENT.try_with(Slot::clone).ok()
}

/// The peer's address, put in each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// Upstream's timestamp form (`metav1.MicroTime`).
fn micro_time(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({ "username": u.name });
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.groups.is_empty() {
        v["groups"] = json!(u.groups);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

/// The body as JSON (protobuf decoded), for `requestObject`/`responseObject`.
fn body_json(content_type: &str, body: &[u8], omit_managed: bool) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    let mut v =
        if content_type.split(';').next().map(str::trim) == Some(crate::protobuf::MEDIA_TYPE) {
            crate::protobuf::decode(body).ok()?
        } else if let Ok(v) = serde_json::from_slice::<Value>(body) {
            v
        } else {
            serde_yaml::from_slice::<Value>(body).ok()?
        };
    if omit_managed && let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Some(v)
}

/// One request's audit event under construction.
struct Event {
    audit: Arc<Audit>,
    event: Value,
    omit: Vec<Stage>,
}

impl Event {
    fn emit(&self, stage: Stage, response_status: Option<Value>) {
        if self.omit.contains(&stage) {
            return;
        }
        let mut ev = self.event.clone();
        ev["stage"] = json!(stage);
        ev["stageTimestamp"] = json!(micro_time(time::OffsetDateTime::now_utc()));
        if let Some(s) = response_status {
            ev["responseStatus"] = s;
        }
        if stage == Stage::RequestReceived
            && let Some(o) = ev.as_object_mut()
        {
            o.remove("responseStatus");
            o.remove("responseObject");
            o.remove("annotations");
        }
        self.audit.write(&ev);
    }
}

/// The audit middleware (outside the authentication middleware).
pub(crate) async fn middleware(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(audit) = state.audit.clone() else {
        return next.run(req).await;
    };
    let received = time::OffsetDateTime::now_utc();
    let slot = Slot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let uri = req.uri().clone();
    let request_uri = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut source_ips: Vec<String> = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(peer) = req.extensions().get::<PeerAddr>() {
        let ip = peer.0.ip().to_string();
        if !source_ips.contains(&ip) {
            source_ips.push(ip);
        }
    }
    // The body is kept for `requestObject` (and the created object's name) when the request
    // has one; it is at most the body limit.
    let has_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
    let mut request_body = Bytes::new();
    if has_body {
        let (parts, body) = req.into_parts();
        request_body = match axum::body::to_bytes(body, crate::server::MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                return crate::status::ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    "the request is too large",
                )
                .into_response();
            }
        };
        req = Request::from_parts(parts, Body::from(request_body.clone()));
    }

    let response = CURRENT.scope(slot.clone(), next.run(req)).await;

    let record = std::mem::take(&mut *slot.0.lock().unwrap_or_else(|e| e.into_inner()));
    let acting = record.impersonated.as_ref().or(record.user.as_ref());
    let attrs = Attributes::from_request(
        acting.cloned().as_ref().unwrap_or(&UserInfo::default()),
        &method,
        &uri,
    );
    let (level, omit, omit_managed) = audit.policy.evaluate(acting, &attrs);
    if level == Level::None {
        return response;
    }
    let code = response.status().as_u16();
    let mut event = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level,
        "auditID": crate::rest::new_uid(),
        "requestURI": request_uri,
        "verb": attrs.verb,
        "user": record.user.as_ref().map(user_json).unwrap_or_else(|| json!({})),
        "sourceIPs": source_ips,
        "requestReceivedTimestamp": micro_time(received),
    });
    if let Some(imp) = &record.impersonated {
        event["impersonatedUser"] = user_json(imp);
    }
    if let Some(ua) = user_agent {
        event["userAgent"] = json!(ua);
    }
    let request_obj = if has_body && level >= Level::Metadata {
        body_json(&content_type, &request_body, omit_managed)
    } else {
        None
    };
    if attrs.resource_request {
        let mut r = json!({ "resource": attrs.resource, "apiVersion": attrs.api_version });
        if !attrs.namespace.is_empty() {
            r["namespace"] = json!(attrs.namespace);
        }
        let name = if attrs.name.is_empty() {
            // A create names its object in the body (upstream completes objectRef from it).
            request_obj
                .as_ref()
                .map(|o| crate::rest::object_meta_str(o, "name").to_string())
                .unwrap_or_default()
        } else {
            attrs.name.clone()
        };
        if !name.is_empty() {
            r["name"] = json!(name);
        }
        if !attrs.api_group.is_empty() {
            r["apiGroup"] = json!(attrs.api_group);
        }
        if !attrs.subresource.is_empty() {
            r["subresource"] = json!(attrs.subresource);
        }
        event["objectRef"] = r;
    }
    if level >= Level::Request
        && let Some(o) = request_obj
    {
        event["requestObject"] = o;
    }
    if let Some(allowed) = record.allowed {
        event["annotations"] = json!({
            "authorization.k8s.io/decision": if allowed { "allow" } else { "forbid" },
            "authorization.k8s.io/reason": "",
        });
    }
    for (key, value, at) in &record.annotations {
        if *at <= level {
            event["annotations"][key] = json!(value);
        }
    }
    let ev = Event { audit, event, omit };
    if record.user.is_none() {
        // Failed authentication: upstream logs one ResponseStarted event.
        ev.emit(
            Stage::ResponseStarted,
            Some(json!({ "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": code })),
        );
        return response;
    }
    ev.emit(Stage::RequestReceived, None);
    let watch = attrs.verb == "watch" && response.status().is_success();
    if watch {
        let status = json!({ "metadata": {}, "code": code });
        ev.emit(Stage::ResponseStarted, Some(status.clone()));
        // ResponseComplete when the stream ends (the guard is dropped with the stream).
        let guard = CompleteOnDrop(Some((ev, status)));
        let (parts, body) = response.into_parts();
        let stream = body.into_data_stream().map(move |chunk| {
            let _ = &guard;
            chunk
        });
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    if (200..300).contains(&code) && level < Level::RequestResponse {
        // Nothing of the body goes into the event: pass the response on untouched.
        ev.emit(
            Stage::ResponseComplete,
            Some(json!({ "metadata": {}, "code": code })),
        );
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let resp_ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let status = if (200..300).contains(&code) {
        json!({ "metadata": {}, "code": code })
    } else {
        let mut s = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(|v| v.get("kind").and_then(Value::as_str) == Some("Status"))
            .map(|v| {
                json!({
                    "metadata": {},
                    "status": v.get("status").cloned().unwrap_or(json!("Failure")),
                    "message": v.get("message").cloned().unwrap_or(json!("")),
                    "reason": v.get("reason").cloned().unwrap_or(json!("")),
                    "code": code,
                })
            })
            .unwrap_or_else(|| json!({ "metadata": {}, "code": code }));
        if let Some(o) = s.as_object_mut() {
            o.retain(|_, v| v != &json!(""));
        }
        s
    };
    let mut ev = ev;
    if level >= Level::RequestResponse
        && let Some(o) = body_json(&resp_ct, &bytes, omit_managed)
    {
        ev.event["responseObject"] = o;
    }
    ev.emit(Stage::ResponseComplete, Some(status));
    Response::from_parts(parts, Body::from(bytes))
}

/// Emits `ResponseComplete` for a watch when its response stream is dropped.
struct CompleteOnDrop(Option<(Event, Value)>);

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        if let Some((ev, status)) = self.0.take() {
            ev.emit(Stage::ResponseComplete, Some(status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Uri;

    fn attrs(user: &UserInfo, method: Method, uri: &str) -> Attributes {
        Attributes::from_request(user, &method, &uri.parse::<Uri>().expect("uri"))
    }

    fn policy(yaml: &str) -> Policy {
        serde_yaml::from_str(yaml).expect("policy")
    }

    #[test]
    fn first_matching_rule_wins_as_upstream() {
        let p = policy(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/version"]
- level: None
  users: ["system:kube-proxy"]
  verbs: ["watch"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["pods/log", "*/status"]
- level: Request
  resources:
  - group: "apps"
    resources: ["deployments/*"]
  namespaces: ["prod"]
- level: Metadata
  userGroups: ["system:authenticated"]
"#,
        );
        let u = UserInfo::new("alice", vec!["system:authenticated".into()]);
        let level = |m: Method, uri: &str| p.evaluate(Some(&u), &attrs(&u, m, uri)).0;
        assert_eq!(level(Method::GET, "/healthz/ping"), Level::None);
        assert_eq!(level(Method::GET, "/version"), Level::None);
        assert_eq!(
            level(Method::GET, "/api/v1/namespaces/a/pods/p/log"),
            Level::RequestResponse
        );
        assert_eq!(
            level(Method::PUT, "/api/v1/nodes/n/status"),
            Level::RequestResponse
        );
        assert_eq!(
            level(
                Method::PUT,
                "/apis/apps/v1/namespaces/prod/deployments/d/scale"
            ),
            Level::Request
        );
        assert_eq!(
            level(
                Method::PUT,
                "/apis/apps/v1/namespaces/dev/deployments/d/scale"
            ),
            Level::Metadata
        );
        assert_eq!(level(Method::GET, "/api/v1/pods"), Level::Metadata);
        let proxy = UserInfo::new("system:kube-proxy", vec![]);
        assert_eq!(
            p.evaluate(
                Some(&proxy),
                &attrs(&proxy, Method::GET, "/api/v1/services?watch=1")
            )
            .0,
            Level::None
        );
        assert_eq!(
            p.evaluate(
                Some(&proxy),
                &attrs(&proxy, Method::GET, "/api/v1/services")
            )
            .0,
            Level::None,
            "no rule matches a user outside system:authenticated"
        );
        assert!(
            p.evaluate(Some(&u), &attrs(&u, Method::GET, "/api/v1/pods"))
                .1
                .contains(&Stage::RequestReceived)
        );
    }

    #[test]
    fn rotation_keeps_max_backups() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let mut sink = Sink::open(&path, 1, 2, 0).expect("opens");
        let line = vec![b'x'; 300 * 1024];
        for _ in 0..12 {
            sink.write(&line).expect("written");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(names.contains(&"audit.log".to_string()), "{names:?}");
        let backups = names
            .iter()
            .filter(|n| n.starts_with("audit-") && n.ends_with(".log"))
            .count();
        assert_eq!(backups, 2, "{names:?}");
        assert!(std::fs::metadata(&path).expect("log").len() <= 1024 * 1024);
    }
}
