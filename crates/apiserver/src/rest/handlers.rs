//! The verbs: get, list, create, update, patch, delete, deletecollection.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use rk3s_datastore::{ListOptions, WriteOutcome};
use serde_json::{Value, json};

use super::object::{
    FieldValidation, check_type, decode_served, decode_stored, encode_stored, meta_str,
    metadata_mut, new_uid, read_back, request_resource_version, served_form, served_object,
    served_objects, set_resource_version, spec_part, typed_roundtrip_checked,
};
use super::options;
use super::{Query, Target, flag, ok};
use crate::admission_webhook::Operation;
use crate::apply::Writer;
use crate::certificates::is_csr;
use crate::registry::{REGISTRY, ResourceInfo};
use crate::selectors::{FieldSelector, LabelSelector, Selectable};
use crate::server::AppState;
use crate::status::{ApiError, Cause};
use crate::validation::validate_name;
use crate::watch_cache::{CachedList, CachedObject};
use std::sync::Arc;

/// How often a write retries after losing a race on an unconditional update or delete.
const MAX_RETRIES: usize = 16;

/// Everything a verb handler needs about the request.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) target: &'a Target,
    pub(crate) query: &'a Query,
    pub(crate) headers: &'a HeaderMap,
    /// Who sends the request (the auth middleware's answer).
    pub(crate) user: &'a crate::auth::UserInfo,
    /// The kubelet's node when a kubelet makes the request: NodeRestriction applies.
    pub(crate) node: Option<&'a str>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn info(&self) -> &'a ResourceInfo {
        &self.target.info
    }
    pub(crate) fn ns(&self) -> Option<&str> {
        self.target.namespace.as_deref()
    }
    pub(crate) fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }
    /// The admission an update through this request goes through (see [`Admit`]).
    pub(crate) fn admit(&self) -> Option<Admit<'a>> {
        Some(Admit {
            user: self.user,
            subresource: self.target.subresource.as_deref(),
        })
    }
    /// NodeRestriction admission of a write by a kubelet (nothing for other users).
    pub(crate) fn node_restriction(
        &self,
        op: crate::node_restriction::Operation,
        old: Option<&Value>,
        new: Option<&Value>,
    ) -> Result<(), ApiError> {
        match self.node {
            Some(node) => crate::node_restriction::admit(
                node,
                self.info(),
                self.target.subresource.as_deref().unwrap_or(""),
                op,
                self.ns().unwrap_or(""),
                old,
                new,
            ),
            None => Ok(()),
        }
    }
    /// The stored object this request names, for NodeRestriction's checks of deletes and
    /// evictions by kubelets (`None` for other users, or when it does not exist).
    async fn stored_for_node(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.node {
            Some(_) => {
                crate::node_restriction::stored(self.state, self.info(), self.ns(), name).await
            }
            None => Ok(None),
        }
    }
    /// Who this request writes as, for `managedFields`: `fieldManager`, else the User-Agent.
    pub(crate) fn writer(&self) -> Writer<'a> {
        let ua = self
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        Writer {
            info: self.info(),
            manager: crate::apply::manager_of(
                self.query.get("fieldManager").map(String::as_str),
                ua,
            ),
            subresource: match self.target.subresource.as_deref() {
                Some("status") => "status",
                _ => "",
            },
            now: crate::time::now_rfc3339(),
        }
    }
}

/// Whether the request is for a served `scale` subresource.
fn is_scale(target: &Target) -> bool {
    target.subresource.as_deref() == Some("scale") && target.info.scale_subresource
}

/// Rejects subresources other than a served `status`.
fn check_subresource(target: &Target) -> Result<bool, ApiError> {
    match target.subresource.as_deref() {
        None => Ok(false),
        Some("status") if target.info.status_subresource => Ok(true),
        Some(_) => Err(ApiError::no_route()),
    }
}

/// The request body as JSON, from JSON or Kubernetes protobuf as its media type says.
pub(crate) fn body_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    if ct == crate::protobuf::MEDIA_TYPE {
        return crate::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not a valid protobuf object: {e}"
            ))
        });
    }
    if !(ct.is_empty() || ct == "application/json" || ct == "*/*") {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// The media type of the body, without parameters.
pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The object or its Table form, as the client asked.
fn respond_object(ctx: Ctx<'_>, code: StatusCode, obj: &Value) -> Result<Response, ApiError> {
    respond_with_warnings(ctx, code, obj, &[])
}

/// Like [`respond_object`], with `Warning` headers (as upstream: `299 - "text"`).
fn respond_with_warnings(
    ctx: Ctx<'_>,
    code: StatusCode,
    obj: &Value,
    warnings: &[String],
) -> Result<Response, ApiError> {
    let mut resp = if super::table::wants_table(ctx.headers) {
        let rv = meta_str(obj, "resourceVersion").to_string();
        let table = super::table::to_table(ctx.info(), std::slice::from_ref(obj), &rv, ctx.query);
        ok(code, &table)?
    } else {
        ok(code, obj)?
    };
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w.clone()));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// get, list

pub(crate) async fn get_or_list(ctx: Ctx<'_>) -> Result<Response, ApiError> {
    let info = ctx.info();
    let Some(name) = ctx.target.name.as_deref() else {
        if ctx.target.subresource.is_some() {
            return Err(ApiError::no_route());
        }
        if ctx.target.watch_path || flag(ctx.query, "watch") {
            return super::watch::serve(ctx).await;
        }
        return list(ctx).await;
    };
    if is_scale(ctx.target) {
        return super::scale::get(ctx, name).await;
    }
    if Part::of(ctx.target) != Some(Part::Approval) {
        check_subresource(ctx.target)?;
    }
    let key = info.key(ctx.ns(), name);
    // With a resourceVersion, the watch cache answers once it is at least that fresh, if the
    // type's cache is running (upstream's `Cacher.Get`; 504 "Too large resource version" as
    // for lists); without one, or while the cache is not ready, the store.
    let rv = ctx.query.get("resourceVersion").map_or("", String::as_str);
    if !rv.is_empty() {
        let min_revision = parse_resource_version(rv)?;
        let cached = ctx
            .state
            .watch_cache
            .list(info, &key, true, None, min_revision)
            .await?;
        if let Some(list) = cached {
            let (_, obj) = list
                .objects
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::not_found(info, name))?;
            let obj = served_object(ctx.state, info, obj.to_value()).await?;
            return respond_object(ctx, StatusCode::OK, &obj);
        }
    }
    let (_, kv) = ctx.state.store.get(&key, 0).await?;
    let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
    let obj = decode_served(ctx.state, info, &kv).await?;
    respond_object(ctx, StatusCode::OK, &obj)
}

/// The parsed selectors of a list or watch.
pub(crate) struct Selectors {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Selectors {
    pub(crate) fn from_query(info: &ResourceInfo, q: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?;
        let mut fields = FieldSelector::parse(
            q.get("fieldSelector").map_or("", String::as_str),
            info.fields,
        )
        .map_err(ApiError::bad_request)?;
        // Selectors match the stored form: map a converted version's field labels to it.
        if let Some(conversion) = info.conversion {
            for t in &mut fields.terms {
                t.field = conversion.field_label(&t.field).to_string();
            }
        }
        Ok(Selectors { labels, fields })
    }

    pub(crate) fn matches<O: Selectable + ?Sized>(&self, obj: &O) -> bool {
        (self.labels.is_empty() || self.labels.matches_labels_of(&|key| obj.label(key)))
            && (self.fields.is_empty() || self.fields.matches(obj))
    }
}

/// What a continue token carries: the list's revision and the last key returned, relative to
/// the list's prefix.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

fn encode_continue(rv: i64, relative_key: &str) -> String {
    let token = ContinueToken {
        v: TOKEN_VERSION.into(),
        rv,
        start: relative_key.to_string(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad("not base64"))?;
    let t: ContinueToken =
        serde_json::from_slice(&bytes).map_err(|_| bad("not a continue token"))?;
    if t.v != TOKEN_VERSION {
        return Err(bad("unknown version"));
    }
    if t.rv <= 0 || t.start.is_empty() || t.start.starts_with('/') || t.start.contains("..") {
        return Err(bad("malformed"));
    }
    Ok((t.rv, t.start))
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a \
    consistent list result. You can start a new list without the continue parameter, or use \
    the continue token in this response to retrieve the remainder of the results. Continuing \
    with the provided token results in an inconsistent list - objects that were created, \
    modified, or deleted between the time the first chunk was returned and now may show up in \
    the list.";

/// One listed object, held as its JSON (never decoded: a list of 10k pods is its JSON, not
/// ten times that).
pub(crate) enum Listed {
    /// Shared with the watch cache (serialized once for every list and watch that sends it),
    /// in the stored form: a custom resource gets its served `apiVersion` when written (a
    /// custom resource read from the store is held so too: see [`convert_listed`]).
    Cached(Arc<CachedObject>),
    /// Read from the store (or converted from the cache's object), in the served form.
    Served(Arc<CachedObject>),
}

impl Listed {
    /// A decoded stored object, in the form `info` serves, encoded. A custom resource keeps
    /// its stored form, which its CRD's webhook may have to convert ([`convert_listed`]).
    fn served(info: &ResourceInfo, stored: Value) -> Listed {
        if info.custom.is_some() {
            return Listed::Cached(CachedObject::new(stored, &[]));
        }
        Listed::Served(CachedObject::new(served_form(info, stored), &[]))
    }

    fn object(&self) -> &CachedObject {
        match self {
            Listed::Cached(o) | Listed::Served(o) => o,
        }
    }

    /// The object in the form `info` serves, decoded.
    pub(crate) fn into_value(self, info: &ResourceInfo) -> Value {
        match self {
            Listed::Cached(o) => served_form(info, o.to_value()),
            Listed::Served(o) => o.to_value(),
        }
    }
}

/// A list's items in the served form when their CRD converts by webhook: every item stored in
/// another version than the one listed is converted in one review, as upstream converts a
/// list. Other lists are returned as they are.
async fn convert_listed(
    state: &AppState,
    info: &ResourceInfo,
    items: Vec<Listed>,
) -> Result<Vec<Listed>, ApiError> {
    if !crate::crd::conversion::by_webhook(state, info) {
        return Ok(items);
    }
    let stored = items
        .iter()
        .map(|i| match i {
            Listed::Cached(o) => o.to_value(),
            // Already served (not made for custom resources): nothing to convert.
            Listed::Served(o) => o.to_value(),
        })
        .collect();
    Ok(served_objects(state, info, stored)
        .await?
        .into_iter()
        .map(|o| Listed::Served(CachedObject::new(o, &[])))
        .collect())
}

/// A page of a list.
pub(crate) struct ListPage {
    pub(crate) items: Vec<Listed>,
    /// The revision the list is at (its `metadata.resourceVersion`).
    pub(crate) revision: i64,
    /// `metadata.continue`, if more remain.
    pub(crate) token: Option<String>,
    /// `metadata.remainingItemCount`: how many objects follow the page, when it is known
    /// (a paged list without selectors, as upstream).
    pub(crate) remaining: Option<i64>,
}

impl ListPage {
    /// A page with nothing after it.
    fn last(items: Vec<Listed>, revision: i64) -> ListPage {
        ListPage {
            items,
            revision,
            token: None,
            remaining: None,
        }
    }
}

/// Where a list is read, by upstream v1.33's rules (`ShouldDelegateList` of the cacher, with
/// `ConsistentListFromCache` on and `ListFromCacheSnapshot` off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListFrom {
    /// The store, at this revision (0: the current one): `resourceVersionMatch=Exact`, a
    /// legacy exact list (a `limit` with a resourceVersion other than "0"), a continue token.
    Store(i64),
    /// The watch cache, at least at this revision; `consistent`: the revision is the store's
    /// current one (no resourceVersion), and a cache that cannot reach it in time falls back
    /// to the store. `limit` is ignored for resourceVersion "0", as upstream's cache does.
    Cache {
        min_revision: i64,
        consistent: bool,
        honor_limit: bool,
    },
}

/// Upstream's validation of list options (`ValidateListOptions`): 422 `Invalid`
/// `ListOptions.meta.k8s.io`.
fn validate_list_options(q: &Query) -> Result<(), ApiError> {
    let Some(m) = q.get("resourceVersionMatch").filter(|m| !m.is_empty()) else {
        return Ok(());
    };
    let rv = q.get("resourceVersion").map_or("", String::as_str);
    let forbidden = |message: &str| Cause {
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {message}"),
        field: "resourceVersionMatch".into(),
    };
    let mut causes = Vec::new();
    if rv.is_empty() {
        causes.push(forbidden(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    if q.get("continue").is_some_and(|c| !c.is_empty()) {
        causes.push(forbidden(
            "resourceVersionMatch is forbidden when continue is provided",
        ));
    }
    if m != "Exact" && m != "NotOlderThan" {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: \"Exact\", \"NotOlderThan\", \"\"",
                Value::String(m.clone())
            ),
            field: "resourceVersionMatch".into(),
        });
    }
    if m == "Exact" && rv == "0" {
        causes.push(forbidden(
            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_list_options(causes))
    }
}

fn parse_resource_version(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// Lists matching objects: from the watch cache or the store as upstream decides (see
/// [`ListFrom`]), with selectors, `limit` and `continue`.
pub(crate) async fn list_items(
    state: &AppState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    selectors: &Selectors,
    q: &Query,
) -> Result<ListPage, ApiError> {
    validate_list_options(q)?;
    let limit: i64 = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            .max(0),
    };
    let rv = q.get("resourceVersion").map_or("", String::as_str);
    let rv_match = q.get("resourceVersionMatch").map_or("", String::as_str);
    let token = q.get("continue").filter(|c| !c.is_empty());
    let mut after = None;
    let from = if let Some(token) = token {
        if !rv.is_empty() && rv != "0" {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (at, start) = decode_continue(token)?;
        after = Some(start);
        ListFrom::Store(at)
    } else {
        match (rv_match, rv) {
            ("Exact", rv) => ListFrom::Store(parse_resource_version(rv)?),
            ("NotOlderThan", rv) => ListFrom::Cache {
                min_revision: parse_resource_version(rv)?,
                consistent: false,
                honor_limit: rv != "0",
            },
            (_, "") => ListFrom::Cache {
                min_revision: 0,
                consistent: true,
                honor_limit: true,
            },
            (_, "0") => ListFrom::Cache {
                min_revision: 0,
                consistent: false,
                honor_limit: false,
            },
            (_, rv) if limit > 0 => ListFrom::Store(parse_resource_version(rv)?),
            (_, rv) => ListFrom::Cache {
                min_revision: parse_resource_version(rv)?,
                consistent: false,
                honor_limit: true,
            },
        }
    };
    // A field selector that pins the name reads one key (upstream: a non-recursive list).
    let single = match selectors.fields.exact_name() {
        Some(name) if namespace.is_some() || !info.namespaced => Some(info.key(namespace, name)),
        _ => None,
    };
    if let ListFrom::Cache {
        mut min_revision,
        consistent,
        honor_limit,
    } = from
    {
        if consistent {
            min_revision = state.store.current_revision().await?;
        }
        let (key_prefix, exact) = match &single {
            Some(key) => (key.clone(), true),
            None => (info.prefix(namespace), false),
        };
        // A selector requiring one node name reads the cache's index of pods by node.
        let value = crate::watch_cache::index_value(info, &selectors.fields);
        let cached = state
            .watch_cache
            .list(info, &key_prefix, exact, value, min_revision)
            .await;
        match cached {
            Ok(Some(list)) => {
                let limit = if honor_limit { limit } else { 0 };
                return Ok(page_from_cache(info, namespace, selectors, list, limit));
            }
            // Not ready yet: the store answers, as upstream while its cacher initializes.
            Ok(None) => {}
            // A consistent read the cache could not catch up with in time is read from the
            // store (upstream v1.33's fallback); any other list gets the 504.
            Err(e) if consistent && e.code == 504 => {}
            Err(e) => return Err(e),
        }
        // The store's current state is at least `min_revision`, or the 504 of etcd3's
        // `validateMinimumResourceVersion` (without a retry hint).
        let page =
            list_from_store(state, info, namespace, selectors, 0, None, limit, &single).await?;
        // Caching starts on first use, at this list's revision: the watch a client starts
        // from it is served.
        state.watch_cache.start(info, page.revision);
        if page.revision < min_revision {
            return Err(ApiError::too_large_resource_version(
                min_revision,
                page.revision,
                0,
            ));
        }
        return Ok(page);
    }
    let ListFrom::Store(revision) = from else {
        return Err(ApiError::internal("unreachable list source"));
    };
    list_from_store(
        state, info, namespace, selectors, revision, after, limit, &single,
    )
    .await
}

/// A page of what the cache listed: the selected objects, at most `limit`
/// (0: all), with upstream's continue token (the cache's revision and the last key returned)
/// when keys remain after the page.
fn page_from_cache(
    info: &ResourceInfo,
    namespace: Option<&str>,
    selectors: &Selectors,
    list: CachedList,
    limit: i64,
) -> ListPage {
    let prefix = info.prefix(namespace);
    let mut items = Vec::new();
    let total = list.objects.len();
    for (i, (key, obj)) in list.objects.into_iter().enumerate() {
        if !selectors.matches(&*obj) {
            continue;
        }
        // A version served by conversion is decoded and converted; everything else is sent
        // as cached.
        items.push(if info.conversion.is_some() {
            Listed::served(info, obj.to_value())
        } else {
            Listed::Cached(obj)
        });
        if limit > 0 && items.len() as i64 >= limit {
            let remaining = (total - i - 1) as i64;
            if remaining == 0 {
                break;
            }
            let unselective = selectors.labels.is_empty() && selectors.fields.is_empty();
            let relative = String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default());
            return ListPage {
                items,
                revision: list.revision,
                token: Some(encode_continue(list.revision, &relative)),
                remaining: unselective.then_some(remaining),
            };
        }
    }
    ListPage::last(items, list.revision)
}

/// A list read from the store at `revision` (0: current), after the key `after` (relative to
/// the list's prefix), or of the one key `single`.
#[allow(clippy::too_many_arguments)]
async fn list_from_store(
    state: &AppState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    selectors: &Selectors,
    mut revision: i64,
    after: Option<String>,
    limit: i64,
    single: &Option<Vec<u8>>,
) -> Result<ListPage, ApiError> {
    let prefix = info.prefix(namespace);
    let continuing = after.is_some();
    let mut items = Vec::new();
    // Selectors run on the stored form (field labels are mapped to it).
    let select = |kv: &rk3s_datastore::KeyValue| -> Result<Option<Listed>, ApiError> {
        let obj = decode_stored(kv)?;
        Ok(selectors.matches(&obj).then(|| Listed::served(info, obj)))
    };
    if let (Some(key), false) = (single, continuing) {
        let (rev, kv) = state.store.get(key, revision).await?;
        if let Some(item) = kv.as_ref().map(select).transpose()?.flatten() {
            items.push(item);
        }
        return Ok(ListPage::last(
            items,
            if revision > 0 { revision } else { rev },
        ));
    }
    let mut after: Option<Vec<u8>> = after.map(|start| {
        let mut key = prefix.clone();
        key.extend_from_slice(start.as_bytes());
        key
    });
    let unselective = selectors.labels.is_empty() && selectors.fields.is_empty();
    loop {
        let resp = state
            .store
            .list(
                &prefix,
                ListOptions {
                    revision,
                    limit,
                    continue_after: after.clone(),
                    ..ListOptions::default()
                },
            )
            .await
            .map_err(|e| match e {
                crate::storage::StoreError::Datastore(rk3s_datastore::Error::Compacted {
                    ..
                }) if continuing => ApiError::expired(CONTINUE_EXPIRED),
                other => other.into(),
            })?;
        // A read at a given revision reports the store's current one: keep the list's.
        if revision == 0 {
            revision = resp.revision;
        }
        let page_len = resp.kvs.len();
        for (i, kv) in resp.kvs.iter().enumerate() {
            after = Some(kv.key.clone());
            if let Some(item) = select(kv)? {
                items.push(item);
            }
            if limit > 0 && items.len() as i64 >= limit {
                let more = i + 1 < page_len || resp.more;
                let token = more.then(|| {
                    encode_continue(revision, &String::from_utf8_lossy(&kv.key[prefix.len()..]))
                });
                // `count` is every key from this request's start: what follows this page is
                // known when the page is this one response, unfiltered.
                let remaining = (more && unselective && i + 1 == page_len)
                    .then(|| resp.count - page_len as i64)
                    .filter(|r| *r > 0);
                return Ok(ListPage {
                    items,
                    revision,
                    token,
                    remaining,
                });
            }
        }
        if !resp.more || page_len == 0 {
            return Ok(ListPage::last(items, revision));
        }
    }
}

async fn list(ctx: Ctx<'_>) -> Result<Response, ApiError> {
    let info = ctx.info();
    let selectors = Selectors::from_query(info, ctx.query)?;
    let mut page = list_items(ctx.state, info, ctx.ns(), &selectors, ctx.query).await?;
    page.items = convert_listed(ctx.state, info, page.items).await?;
    let mut meta = json!({ "resourceVersion": page.revision.to_string() });
    if let Some(t) = &page.token {
        meta["continue"] = json!(t);
    }
    if let Some(n) = page.remaining {
        meta["remainingItemCount"] = json!(n);
    }
    if super::table::wants_table(ctx.headers) {
        let items: Vec<Value> = page.items.into_iter().map(|i| i.into_value(info)).collect();
        let mut table = super::table::to_table(info, &items, &page.revision.to_string(), ctx.query);
        if let Some(t) = page.token {
            table["metadata"]["continue"] = json!(t);
        }
        if let Some(n) = page.remaining {
            table["metadata"]["remainingItemCount"] = json!(n);
        }
        return ok(StatusCode::OK, &table);
    }
    // Written item by item: a cached object's JSON is copied, not re-encoded. Items of
    // built-in lists carry no `apiVersion`/`kind` (upstream's typed lists); custom resources
    // keep theirs (upstream's unstructured lists).
    let custom = info.custom.is_some();
    let served_version = custom.then(|| info.api_version());
    let size: usize = page
        .items
        .iter()
        .map(|i| i.object().item_json().len() + 1)
        .sum();
    let mut out = Vec::with_capacity(size + 256);
    let write = |out: &mut Vec<u8>, v: &Value| {
        let _ = serde_json::to_writer(out, v);
    };
    out.extend_from_slice(b"{\"kind\":");
    write(&mut out, &json!(info.list_kind));
    out.extend_from_slice(b",\"apiVersion\":");
    write(&mut out, &json!(info.api_version()));
    out.extend_from_slice(b",\"metadata\":");
    write(&mut out, &meta);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match item {
            Listed::Cached(o) | Listed::Served(o) if !custom => {
                out.extend_from_slice(o.item_json())
            }
            Listed::Cached(o) | Listed::Served(o) => {
                o.write_json_as(&mut out, served_version.as_deref())
            }
        }
    }
    out.extend_from_slice(b"]}");
    Ok(super::bytes_response(StatusCode::OK, out))
}

// ---------------------------------------------------------------------------------------------
// create

pub(crate) async fn create(ctx: Ctx<'_>, body: &[u8]) -> Result<Response, ApiError> {
    let info = ctx.info();
    if let (Some(name), Some("binding")) = (
        ctx.target.name.as_deref(),
        ctx.target.subresource.as_deref(),
    ) && is_pod(info)
    {
        return bind(ctx, name, body).await;
    }
    if let (Some(name), Some("eviction")) = (
        ctx.target.name.as_deref(),
        ctx.target.subresource.as_deref(),
    ) && is_pod(info)
    {
        if let Some(pod) = ctx.stored_for_node(name).await? {
            ctx.node_restriction(crate::node_restriction::Operation::Create, Some(&pod), None)?;
        }
        // Admission webhooks see the Eviction (a CREATE of `pods/eviction`).
        let mut eviction = body_json(ctx.headers, body)?;
        if let Some(o) = eviction.as_object_mut() {
            // As the decoded, typed Eviction is encoded for webhooks.
            o.entry("apiVersion").or_insert_with(|| json!("policy/v1"));
            o.entry("kind").or_insert_with(|| json!("Eviction"));
        }
        let state = ctx.state;
        let changed = crate::admission_webhook::mutate(
            state,
            info,
            Operation::Create,
            Some(&mut eviction),
            None,
        )
        .await?;
        crate::admission_webhook::validate(state, info, Operation::Create, Some(&eviction), None)
            .await?;
        if changed {
            let mut headers = ctx.headers.clone();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            let body = serde_json::to_vec(&eviction).map_err(ApiError::internal)?;
            let ctx = Ctx {
                headers: &headers,
                ..ctx
            };
            return super::eviction::evict(ctx, name, &body).await;
        }
        return super::eviction::evict(ctx, name, body).await;
    }
    if ctx.target.name.is_some() || ctx.target.subresource.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    if info.namespaced && ctx.ns().is_none() {
        return Err(ApiError::method_not_allowed());
    }
    if info.custom.as_ref().is_some_and(|c| c.terminating) {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "create not allowed while custom resource definition is terminating",
        ));
    }
    let validation = FieldValidation::from_query(ctx.query)?;
    let mut obj = body_json(ctx.headers, body)?;
    if is_csr(info) {
        set_csr_requester(&mut obj, ctx.user);
    }
    ctx.node_restriction(crate::node_restriction::Operation::Create, None, Some(&obj))?;
    if let Some(node) = ctx.node {
        crate::node_restriction::admit_mirror_pod_owner(ctx.state, node, info, &obj).await?;
    }
    let writer = ctx.writer();
    let (obj, warnings) = create_object_as(
        ctx.state,
        info,
        ctx.ns(),
        obj,
        ctx.dry_run(),
        validation,
        Some(&writer),
    )
    .await?;
    respond_with_warnings(ctx, StatusCode::CREATED, &obj, &warnings)
}

/// The namespace an object of `info` goes in: the path's, which the body must match.
fn namespace_of(
    info: &ResourceInfo,
    path_ns: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let meta =
        metadata_mut(obj).ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    if !info.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let ns = path_ns.unwrap_or("");
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(ns));
        }
        Some(n) if n == ns => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ));
        }
    }
    Ok(())
}

/// Checks that `ns` exists and is not terminating.
async fn check_namespace(
    state: &AppState,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    let ns_info = REGISTRY
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
    let (_, kv) = state.store.get(&ns_info.key(None, ns), 0).await?;
    let kv = kv.ok_or_else(|| ApiError::not_found(ns_info, ns))?;
    let ns_obj = decode_stored(&kv)?;
    if !meta_str(&ns_obj, "deletionTimestamp").is_empty() {
        return Err(ApiError::forbidden(
            info,
            name,
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        ));
    }
    Ok(())
}

/// Validates, defaults and stores a new object; returns it as stored, and the warnings about
/// unknown fields. Its managed fields name `kube-apiserver` (what the server creates itself).
pub(crate) async fn create_object(
    state: &AppState,
    info: &ResourceInfo,
    path_ns: Option<&str>,
    obj: Value,
    dry_run: bool,
    validation: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let writer = Writer {
        info: REGISTRY
            .find(info.group, info.version, info.plural)
            .ok_or_else(|| ApiError::internal("the resource is not registered"))?,
        manager: "kube-apiserver".into(),
        subresource: "",
        now: crate::time::now_rfc3339(),
    };
    create_object_as(
        state,
        info,
        path_ns,
        obj,
        dry_run,
        validation,
        Some(&writer),
    )
    .await
}

/// [`create_object`] recording the create by `writer` in `managedFields`; with `None` the
/// object's managed fields are kept as given (server-side apply has set them).
pub(crate) async fn create_object_as(
    state: &AppState,
    info: &ResourceInfo,
    path_ns: Option<&str>,
    mut obj: Value,
    dry_run: bool,
    validation: FieldValidation,
    writer: Option<&Writer<'_>>,
) -> Result<(Value, Vec<String>), ApiError> {
    check_type(&mut obj, info)?;
    drop_ignored_status(info, &mut obj);
    let (mut obj, warnings) = typed_roundtrip_checked(obj, info, validation)?;
    crate::defaults::apply(info, &mut obj, true);
    check_crd(info, &obj, None)?;
    namespace_of(info, path_ns, &mut obj)?;
    let ns =
        (!meta_str(&obj, "namespace").is_empty()).then(|| meta_str(&obj, "namespace").to_string());
    crate::admission::admit_create(state, info, ns.as_deref(), &mut obj).await?;
    if crate::admission_webhook::mutate(state, info, Operation::Create, Some(&mut obj), None)
        .await?
    {
        obj = after_create_mutation(info, path_ns, obj)?;
    }
    crate::certificates::admit_subject(info, &obj)?;
    let name = meta_str(&obj, "name").to_string();
    let generate = meta_str(&obj, "generateName").to_string();
    if name.is_empty() && generate.is_empty() {
        return Err(ApiError::invalid(
            info,
            "",
            vec![Cause {
                reason: "FieldValueRequired",
                message: "Required value: name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    }
    // Validate the given name, or the generateName prefix (with a stand-in suffix).
    let checked = if name.is_empty() {
        format!(
            "{}a",
            &generate[..generate
                .len()
                .min(crate::validation::GENERATE_NAME_PREFIX_MAX)]
        )
    } else {
        name.clone()
    };
    let problems = validate_name(info.name_rule, &checked);
    if !problems.is_empty() {
        let (field, shown) = if name.is_empty() {
            ("metadata.generateName", generate.as_str())
        } else {
            ("metadata.name", name.as_str())
        };
        let causes = problems
            .into_iter()
            .map(|p| Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {shown:?}: {p}"),
                field: field.into(),
            })
            .collect();
        return Err(ApiError::invalid(info, shown, causes));
    }
    let causes = crate::auth::serviceaccount::validate_token_secret(info, &obj);
    if !causes.is_empty() {
        return Err(ApiError::invalid(info, &name, causes));
    }
    if let Some(ns) = path_ns.filter(|_| info.namespaced) {
        check_namespace(state, info, ns, &name).await?;
    }
    if is_service(info) {
        // Allocation checked, then upstream's `ValidateService`, dry runs included; what is
        // allocated is taken with the write.
        crate::services::prepare_create(state, info, &mut obj, dry_run).await?;
    }
    set_system_fields(info, &mut obj);
    // The generated name the write tries first: validating webhooks see it, as upstream
    // generates it before validation.
    let mut first_generated = name
        .is_empty()
        .then(|| crate::validation::generate_name(&generate));
    match &first_generated {
        Some(g) => {
            let mut named = obj.clone();
            if let Some(meta) = metadata_mut(&mut named) {
                meta.insert("name".into(), json!(g));
            }
            crate::admission_webhook::validate(state, info, Operation::Create, Some(&named), None)
                .await?;
        }
        None => {
            crate::admission_webhook::validate(state, info, Operation::Create, Some(&obj), None)
                .await?
        }
    }
    if let Some(ns) = path_ns.filter(|_| info.namespaced) {
        // Last, as upstream's validating admission: charges the namespace's quotas.
        crate::quota::admit_create(state, info, ns, &obj, dry_run).await?;
    }
    if let Some(w) = writer {
        crate::apply::track_client_update(w, None, &mut obj)?;
    }
    // A generated name that collides is generated again, as upstream does.
    let attempts = if name.is_empty() { 8 } else { 1 };
    let webhook = crate::crd::conversion::by_webhook(state, info);
    for _ in 0..attempts {
        let this_name = if name.is_empty() {
            first_generated
                .take()
                .unwrap_or_else(|| crate::validation::generate_name(&generate))
        } else {
            name.clone()
        };
        if let Some(meta) = metadata_mut(&mut obj) {
            meta.insert("name".into(), json!(this_name));
        }
        if dry_run {
            // Converted as a write would be (upstream's dry-run storage encodes and decodes).
            if webhook {
                let value = encode_stored(state, info, &obj).await?;
                obj = read_back(state, info, &value, None).await?;
            }
            return Ok((obj, warnings));
        }
        let key = info.key(path_ns, &this_name);
        // What a webhook-converted create answers is read back from what it stored.
        let mut written = None;
        let outcome = if is_service(info) {
            crate::services::create(state, info, &key, &mut obj).await?
        } else {
            let value = encode_stored(state, info, &obj).await?;
            written = webhook.then(|| value.clone());
            state.store.create(&key, value, 0).await?
        };
        match outcome {
            WriteOutcome::Written { revision } => {
                set_resource_version(&mut obj, revision);
                if let Some(bytes) = &written {
                    obj = read_back(state, info, bytes, Some(revision)).await?;
                }
                tracing::debug!(name = %this_name, revision, "created");
                return Ok((obj, warnings));
            }
            WriteOutcome::Conflict { .. } if attempts > 1 => continue,
            WriteOutcome::Conflict { .. } => {
                return Err(ApiError::already_exists(info, &this_name));
            }
        }
    }
    Err(ApiError::already_exists(info, &generate))
}

/// A created object that mutating webhooks changed, decoded, defaulted and checked again (as
/// upstream decodes and defaults a patched object).
fn after_create_mutation(
    info: &ResourceInfo,
    path_ns: Option<&str>,
    mut obj: Value,
) -> Result<Value, ApiError> {
    check_type(&mut obj, info)?;
    let (mut obj, _) = typed_roundtrip_checked(obj, info, FieldValidation::Ignore)?;
    crate::defaults::apply(info, &mut obj, true);
    check_crd(info, &obj, None)?;
    namespace_of(info, path_ns, &mut obj)?;
    Ok(obj)
}

/// An update that mutating webhooks changed (`mutated`; `before`: what the request made of
/// `old`), decoded, defaulted and merged with `old` again as the request's subresource
/// allows; its managed fields stay the request's (webhooks' changes are not tracked).
fn after_update_mutation(
    info: &ResourceInfo,
    old: &Value,
    before: &Value,
    mut mutated: Value,
    subresource: Option<&str>,
) -> Result<Value, ApiError> {
    check_type(&mut mutated, info)?;
    let (mut mutated, _) = typed_roundtrip_checked(mutated, info, FieldValidation::Ignore)?;
    let mut new = match subresource {
        None => {
            crate::defaults::apply(info, &mut mutated, false);
            merge_update(info, old, &mutated, false)?
        }
        Some("status") => merge_update(info, old, &mutated, true)?,
        Some("finalize") => merge_part(info, old, &mutated, Part::Finalize)?,
        Some("approval") => merge_part(info, old, &mutated, Part::Approval)?,
        Some(_) => return Ok(before.clone()),
    };
    if let Some(meta) = metadata_mut(&mut new) {
        match before.pointer("/metadata/managedFields") {
            Some(m) => meta.insert("managedFields".into(), m.clone()),
            None => meta.remove("managedFields"),
        };
    }
    Ok(new)
}

fn is_pod(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "Pod"
}

/// `pods/binding`: assigns a pod to a node (what the scheduler does), once. Sets
/// `spec.nodeName` and the `PodScheduled` condition; answers a `Success` Status.
async fn bind(ctx: Ctx<'_>, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let info = ctx.info();
    let mut binding = body_json(ctx.headers, body)?;
    // Admission webhooks see the Binding (a CREATE of `pods/binding`): mutating ones first,
    // validating ones after its checks, as upstream's BindingREST.
    crate::admission_webhook::typed_body(&mut binding, "v1", "Binding", ctx.ns());
    let state = ctx.state;
    crate::admission_webhook::mutate(state, info, Operation::Create, Some(&mut binding), None)
        .await?;
    if let Some(n) = binding
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| *n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the binding ({n}) does not match the pod ({name})"
        )));
    }
    let node = binding
        .get("target")
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("a binding needs target.name, the node"))?
        .to_string();
    crate::admission_webhook::validate(state, info, Operation::Create, Some(&binding), None)
        .await?;
    let key = info.key(ctx.ns(), name);
    guaranteed_update(ctx.state, info, &key, name, ctx.dry_run(), |old| {
        if !meta_str(old, "deletionTimestamp").is_empty() {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        let current = old
            .get("spec")
            .and_then(|s| s.get("nodeName"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !current.is_empty() {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{current}\""),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        if !new.get("status").is_some_and(Value::is_object) {
            new["status"] = json!({});
        }
        let mut conditions: Vec<Value> = new["status"]
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
        conditions.push(json!({
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": null,
            "lastTransitionTime": crate::time::now_rfc3339(),
        }));
        new["status"]["conditions"] = json!(conditions);
        Ok(new)
    })
    .await?;
    ok(
        StatusCode::CREATED,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }),
    )
}

/// A built-in object must pass upstream's validation of its type
/// ([`crate::validation::validate_builtin`]), a CRD upstream's CRD validation (see
/// [`crate::crd::validate_crd`]); a custom resource its schema and CEL rules ([`crate::crd::validate_custom_resource`], with `old`
/// on updates for ratcheting and transition rules).
fn check_crd(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let causes = crate::validation::validate_builtin(info, obj, old);
    if !causes.is_empty() {
        return Err(ApiError::invalid(info, meta_str(obj, "name"), causes));
    }
    if let Some(schema) = info.custom.as_ref().and_then(|c| c.schema.as_ref()) {
        let causes = crate::crd::validate_custom_resource(schema, obj, old);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info, meta_str(obj, "name"), causes));
        }
    }
    if !is_crd(info) {
        return Ok(());
    }
    let causes = crate::crd::validate_crd(obj, old);
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(info, meta_str(obj, "name"), causes))
}

/// A custom resource with a status subresource ignores `status` on the main resource (create,
/// update): it is dropped before schema validation, as upstream resets it before validating.
fn drop_ignored_status(info: &ResourceInfo, obj: &mut Value) {
    if info.custom.is_some()
        && info.status_subresource
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
}

fn is_crd(info: &ResourceInfo) -> bool {
    info.group == "apiextensions.k8s.io" && info.kind == "CustomResourceDefinition"
}

fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "Service"
}

/// A Job without `manualSelector` selects its pods by its uid, as upstream's job strategy
/// does: the selector and the template labels are generated.
fn job_selector(job: &mut serde_json::Map<String, Value>, name: &str) {
    let uid = job
        .get("metadata")
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    spec.insert(
        "selector".into(),
        json!({ "matchLabels": { "batch.kubernetes.io/controller-uid": uid } }),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    let meta = &mut template["metadata"];
    if !meta.get("labels").is_some_and(Value::is_object) {
        meta["labels"] = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", name),
        ("controller-uid", uid.as_str()),
        ("job-name", name),
    ] {
        meta["labels"][k] = json!(v);
    }
}

/// The fields the server owns on create: uid, creationTimestamp, generation, a reset status,
/// and the per-kind defaults upstream sets there.
fn set_system_fields(info: &ResourceInfo, obj: &mut Value) {
    let name = meta_str(obj, "name").to_string();
    if let Some(meta) = metadata_mut(obj) {
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert(
            "creationTimestamp".into(),
            json!(crate::time::now_rfc3339()),
        );
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        if info.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if info.kind == "Namespace" && !name.is_empty() {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
    }
    let Some(o) = obj.as_object_mut() else { return };
    if info.status_subresource && info.custom.is_some() {
        // Upstream's custom resource strategy: create cannot set status.
        o.remove("status");
    } else if info.status_subresource && !(info.group.is_empty() && info.kind == "Node") {
        // Nodes are the exception: a kubelet registers its node with its status.
        o.insert("status".into(), json!({}));
    }
    match info.kind {
        "Namespace" => {
            let spec = o.entry("spec").or_insert_with(|| json!({}));
            if spec.get("finalizers").is_none() {
                spec["finalizers"] = json!(["kubernetes"]);
            }
            o.insert("status".into(), json!({ "phase": "Active" }));
        }
        "Pod" => {
            let qos = rk3s_quota::qos::qos_class(o.get("spec").unwrap_or(&Value::Null));
            o.insert(
                "status".into(),
                json!({ "phase": "Pending", "qosClass": qos }),
            );
        }
        "Service" => {
            o.insert("status".into(), json!({ "loadBalancer": {} }));
        }
        "Job" if info.group == "batch" => job_selector(o, &name),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// update, patch

/// Reads the object, applies `f` to it and writes the result guarded by the mod revision read,
/// retrying when another write got in between. `f` sees the current object (with its
/// `resourceVersion`) and enforces any precondition itself. An unchanged object is not
/// written. Returns the object as stored.
pub(crate) async fn guaranteed_update<F>(
    state: &AppState,
    info: &ResourceInfo,
    key: &[u8],
    name: &str,
    dry_run: bool,
    f: F,
) -> Result<Value, ApiError>
where
    F: FnMut(&Value) -> Result<Value, ApiError>,
{
    guaranteed_update_admitted(state, info, key, name, dry_run, None, f).await
}

/// Who writes through which subresource: what the validating admission plugins that need
/// the store or the authorizer look at, on the object as it would be stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admit<'a> {
    pub(crate) user: &'a crate::auth::UserInfo,
    pub(crate) subresource: Option<&'a str>,
}

/// [`guaranteed_update`] of a client's request: after `f`, inside the compare-and-swap loop
/// (so on the object it replaces), the validating admission upstream runs on updates —
/// CertificateApproval (`/approval`) and CertificateSigning (`/status`) of CSRs, and
/// ResourceQuota on the main resource (last, as upstream).
pub(crate) async fn guaranteed_update_admitted<F>(
    state: &AppState,
    info: &ResourceInfo,
    key: &[u8],
    name: &str,
    dry_run: bool,
    admit: Option<Admit<'_>>,
    mut f: F,
) -> Result<Value, ApiError>
where
    F: FnMut(&Value) -> Result<Value, ApiError>,
{
    // What the quotas were charged by the attempts that lost a compare-and-swap.
    let mut quota_charged = crate::quota::Charged::default();
    for _ in 0..MAX_RETRIES {
        let (_, kv) = state.store.get(key, 0).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
        let old = decode_served(state, info, &kv).await?;
        let mut new = f(&old)?;
        set_resource_version(&mut new, kv.mod_revision);
        if let Some(admit) = admit {
            let mut mutated = new.clone();
            let op = Operation::Update;
            if crate::admission_webhook::mutate(state, info, op, Some(&mut mutated), Some(&old))
                .await?
            {
                new = after_update_mutation(info, &old, &new, mutated, admit.subresource)?;
            }
        }
        // A Service's allocations and validation, on every update of the main resource
        // (upstream's service REST); `/status` writes keep the spec.
        let status_write = admit.is_some_and(|a| a.subresource.is_some());
        let drawn = if is_service(info) && (old.get("spec") != new.get("spec") || !status_write) {
            crate::services::prepare_update(state, info, &old, &mut new).await?
        } else {
            crate::services::Drawn::default()
        };
        if let Some(admit) = admit {
            if crate::certificates::is_csr(info) {
                match admit.subresource {
                    Some("approval") => {
                        crate::certificates::admit_approval(state, info, admit.user, &old).await?
                    }
                    Some("status") => {
                        crate::certificates::admit_signing(state, info, admit.user, &old, &new)
                            .await?
                    }
                    _ => {}
                }
            }
            let op = Operation::Update;
            crate::admission_webhook::validate(state, info, op, Some(&new), Some(&old)).await?;
            // What the update adds to quota usage (a resize, a type change). Usage is
            // computed from the spec alone, so metadata-only writes cannot change it.
            if admit.subresource.is_none()
                && crate::quota::handles_update(info)
                && old.get("spec") != new.get("spec")
            {
                crate::quota::admit_update(state, info, &old, &new, dry_run, &mut quota_charged)
                    .await?;
            }
        }
        // The update that leaves an object being deleted without finalizers deletes it
        // instead of being written (upstream's `shouldDeleteDuringUpdate`): watchers see one
        // DELETED event, no MODIFIED first; the client gets the object it sent, as upstream.
        if deletes_during_update(info, &old, &new) {
            if dry_run {
                return Ok(new);
            }
            let outcome = if is_service(info) {
                // What the stored Service holds is released with it.
                crate::services::delete(state, key, kv.mod_revision, &old).await?
            } else {
                state.store.delete(key, Some(kv.mod_revision)).await?
            };
            match outcome {
                WriteOutcome::Written { revision } => {
                    tracing::debug!(
                        name,
                        revision,
                        "deleted by the update removing its last finalizer"
                    );
                    return Ok(new);
                }
                WriteOutcome::Conflict { .. } => continue,
            }
        }
        // An unchanged object is written anyway if it is stored with an old encryption key
        // (upstream's stale read: how `kubectl replace` re-encrypts).
        if dry_run && crate::crd::conversion::by_webhook(state, info) {
            // Converted as a write would be (upstream's dry-run storage encodes and decodes).
            let value = encode_stored(state, info, &new).await?;
            return read_back(state, info, &value, Some(kv.mod_revision)).await;
        }
        if dry_run || (new == old && !state.store.needs_rewrite(key, kv.mod_revision).await) {
            return Ok(new);
        }
        let value = encode_stored(state, info, &new).await?;
        // What a webhook-converted update answers is read back from what it stored.
        let written = crate::crd::conversion::by_webhook(state, info).then(|| value.clone());
        let outcome = if is_service(info) {
            match crate::services::update(state, key, kv.mod_revision, value, &old, &new).await? {
                crate::services::UpdateOutcome::Written { revision } => {
                    WriteOutcome::Written { revision }
                }
                crate::services::UpdateOutcome::Conflict => {
                    WriteOutcome::Conflict { current: None }
                }
                // A random pick someone else holds is drawn again.
                crate::services::UpdateOutcome::PortTaken(i, _) if drawn.ports.contains(&i) => {
                    WriteOutcome::Conflict { current: None }
                }
                crate::services::UpdateOutcome::PortTaken(i, port) => {
                    return Err(crate::services::port_taken(info, name, i, port));
                }
                crate::services::UpdateOutcome::IpTaken(_) if drawn.ip => {
                    WriteOutcome::Conflict { current: None }
                }
                crate::services::UpdateOutcome::IpTaken(ip) => {
                    return Err(crate::services::ip_taken(info, name, ip));
                }
                crate::services::UpdateOutcome::HealthCheckTaken(_) if drawn.health_check => {
                    WriteOutcome::Conflict { current: None }
                }
                crate::services::UpdateOutcome::HealthCheckTaken(port) => {
                    return Err(crate::services::health_check_taken(port));
                }
            }
        } else {
            state.store.update(key, value, kv.mod_revision, 0).await?
        };
        match outcome {
            WriteOutcome::Written { revision } => {
                set_resource_version(&mut new, revision);
                if let Some(bytes) = &written {
                    new = read_back(state, info, bytes, Some(revision)).await?;
                }
                tracing::debug!(name, revision, "updated");
                return Ok(new);
            }
            WriteOutcome::Conflict { .. } => continue,
        }
    }
    Err(ApiError::conflict(info, name))
}

/// Whether an update of `old` to `new` deletes the object instead (upstream's
/// `shouldDeleteDuringUpdate`): `old` is being deleted with no grace period left to wait
/// (`deletionGracePeriodSeconds` absent or 0), `new` has no finalizers — for a namespace,
/// neither `metadata.finalizers` nor `spec.finalizers`. A pod in its graceful termination is
/// deleted by its kubelet's grace-0 DELETE, not by a write, even the one removing its last
/// finalizer; a DELETE of a pod with finalizers records the grace 0 it asks for, so the
/// finalizer's removal deletes it after that (see [`delete_object`]).
fn deletes_during_update(info: &ResourceInfo, old: &Value, new: &Value) -> bool {
    let grace = old
        .get("metadata")
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    !meta_str(old, "deletionTimestamp").is_empty()
        && finalizers(new).is_empty()
        && grace == 0
        && !(info.group.is_empty() && info.kind == "Namespace" && has_spec_finalizers(new))
}

/// A namespace's `spec.finalizers` (the namespace controller's `kubernetes`) are not empty.
fn has_spec_finalizers(obj: &Value) -> bool {
    obj.get("spec")
        .and_then(|s| s.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn finalizers(obj: &Value) -> Vec<Value> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The optimistic concurrency of an update of `old` with `req`: a resourceVersion in `req`
/// must be the stored one (409), and one is required where the resource does not allow
/// unconditional updates (422).
fn check_resource_version(
    info: &ResourceInfo,
    name: &str,
    old: &Value,
    req: &Value,
) -> Result<(), ApiError> {
    match request_resource_version(req)? {
        Some(rv) if meta_str(old, "resourceVersion") != rv.to_string() => {
            Err(ApiError::conflict(info, name))
        }
        None if !info.unconditional_update => Err(ApiError::resource_version_required(info, name)),
        _ => Ok(()),
    }
}

/// The object an update of `old` with `req` stores: the system fields of `old` are kept; on the
/// main resource a status subresource's status is kept; on `/status` only the status changes.
pub(crate) fn merge_update(
    info: &ResourceInfo,
    old: &Value,
    req: &Value,
    status_only: bool,
) -> Result<Value, ApiError> {
    let name = meta_str(old, "name").to_string();
    check_resource_version(info, &name, old, req)?;
    if status_only {
        let mut new = old.clone();
        if let Some(o) = new.as_object_mut() {
            match req.get("status") {
                Some(s) => o.insert("status".into(), s.clone()),
                None => o.remove("status"),
            };
        }
        if is_csr(info) {
            // Approved/Denied conditions change only through `/approval`.
            let approvals = |v: &Value| -> Vec<Value> {
                conditions_of(v)
                    .into_iter()
                    .filter(is_approval_condition)
                    .collect()
            };
            let mut conds: Vec<Value> = conditions_of(&new)
                .into_iter()
                .filter(|c| !is_approval_condition(c))
                .collect();
            conds.extend(approvals(old));
            stamp_conditions(&mut conds, old);
            set_conditions(&mut new, conds);
        }
        if info.custom.is_some() {
            check_crd(info, &new, Some(old))?;
        } else {
            crate::validation::prepare_status_update(info, &mut new, old);
            let causes = crate::validation::validate_status_update(info, &new, old);
            if !causes.is_empty() {
                return Err(ApiError::invalid(info, &name, causes));
            }
        }
        return Ok(new);
    }
    let mut new = req.clone();
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(meta) = metadata_mut(&mut new) {
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match old_meta.get(f) {
                Some(v) => meta.insert(f.into(), v.clone()),
                None => meta.remove(f),
            };
        }
        meta.remove("selfLink");
    }
    if info.status_subresource
        && let Some(o) = new.as_object_mut()
    {
        match old.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    if is_service(info) {
        crate::services::keep_cluster_ip(old, &mut new);
    }
    // Upstream's strategies: a namespace's spec.finalizers change only through `/finalize`;
    // a CSR's spec never changes after create.
    if info.group.is_empty() && info.kind == "Namespace" {
        let kept = old.get("spec").and_then(|s| s.get("finalizers")).cloned();
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            match kept {
                Some(f) => spec.insert("finalizers".into(), f),
                None => spec.remove("finalizers"),
            };
        }
    }
    if is_csr(info)
        && let (Some(o), Some(spec)) = (new.as_object_mut(), old.get("spec"))
    {
        o.insert("spec".into(), spec.clone());
    }
    check_crd(info, &new, Some(old))?;
    // Custom resources without a status subresource count status changes too (upstream
    // bumps on any change outside metadata).
    let changed = if info.custom.is_some() && !info.status_subresource {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
            }
            v
        };
        strip(&new) != strip(old)
    } else {
        spec_part(&new) != spec_part(old)
    };
    if info.generation && changed {
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        if let Some(meta) = metadata_mut(&mut new) {
            meta.insert("generation".into(), json!(generation));
        }
    }
    Ok(new)
}

/// Subresources that replace one part of the object: a namespace's `finalize`
/// (`spec.finalizers`), a CSR's `approval` (its `Approved`/`Denied` conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Finalize,
    Approval,
}

impl Part {
    fn of(target: &Target) -> Option<Part> {
        match (
            target.subresource.as_deref(),
            target.info.group,
            target.info.kind,
        ) {
            (Some("finalize"), "", "Namespace") => Some(Part::Finalize),
            (Some("approval"), "certificates.k8s.io", "CertificateSigningRequest") => {
                Some(Part::Approval)
            }
            _ => None,
        }
    }
}

fn conditions_of(obj: &Value) -> Vec<Value> {
    obj.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn set_conditions(obj: &mut Value, conds: Vec<Value>) {
    if let Some(o) = obj.as_object_mut() {
        let status = o.entry("status").or_insert_with(|| json!({}));
        if let Some(s) = status.as_object_mut() {
            if conds.is_empty() {
                s.remove("conditions");
            } else {
                s.insert("conditions".into(), json!(conds));
            }
        }
    }
}

fn is_approval_condition(c: &Value) -> bool {
    matches!(
        c.get("type").and_then(Value::as_str),
        Some("Approved" | "Denied")
    )
}

/// Upstream's `populateConditionTimestamps`: a condition without `lastUpdateTime` gets now; a
/// new condition, or one whose status changed, without `lastTransitionTime` gets now, and an
/// unchanged one keeps the old time.
fn stamp_conditions(conds: &mut [Value], old: &Value) {
    let now = crate::time::now_rfc3339();
    let before = conditions_of(old);
    for c in conds.iter_mut() {
        let Some(o) = c.as_object_mut() else { continue };
        if o.get("lastUpdateTime").is_none_or(Value::is_null) {
            o.insert("lastUpdateTime".into(), json!(now));
        }
        if o.get("lastTransitionTime").is_none_or(Value::is_null) {
            let prev = before
                .iter()
                .find(|p| p.get("type") == o.get("type") && p.get("status") == o.get("status"))
                .and_then(|p| p.get("lastTransitionTime"))
                .cloned();
            o.insert(
                "lastTransitionTime".into(),
                prev.unwrap_or_else(|| json!(now)),
            );
        }
    }
}

/// The object an update of `old` through a [`Part`] subresource stores: `old` with only that
/// part taken from `req`.
fn merge_part(
    info: &ResourceInfo,
    old: &Value,
    req: &Value,
    part: Part,
) -> Result<Value, ApiError> {
    let name = meta_str(old, "name").to_string();
    check_resource_version(info, &name, old, req)?;
    let mut new = old.clone();
    match part {
        Part::Finalize => {
            let wanted = req.get("spec").and_then(|s| s.get("finalizers")).cloned();
            if let Some(o) = new.as_object_mut() {
                let spec = o.entry("spec").or_insert_with(|| json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    match wanted.filter(|f| f.as_array().is_some_and(|a| !a.is_empty())) {
                        Some(f) => spec.insert("finalizers".into(), f),
                        None => spec.remove("finalizers"),
                    };
                }
            }
        }
        Part::Approval => {
            let mut conds = conditions_of(req);
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| c.get("type").and_then(Value::as_str) == Some(t))
            };
            if has("Approved") && has("Denied") {
                return Err(ApiError::invalid(
                    info,
                    &name,
                    vec![Cause {
                        reason: "FieldValueInvalid",
                        message: "Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive".into(),
                        field: "status.conditions[1].type".into(),
                    }],
                ));
            }
            for (i, c) in conds.iter().enumerate() {
                if is_approval_condition(c)
                    && c.get("status").and_then(Value::as_str) != Some("True")
                {
                    return Err(ApiError::invalid(
                        info,
                        &name,
                        vec![Cause {
                            reason: "FieldValueNotSupported",
                            message: format!(
                                "Unsupported value: {}: supported values: \"True\"",
                                c.get("status").unwrap_or(&Value::Null)
                            ),
                            field: format!("status.conditions[{i}].status"),
                        }],
                    ));
                }
            }
            stamp_conditions(&mut conds, old);
            set_conditions(&mut new, conds);
        }
    }
    Ok(new)
}

/// PUT of a [`Part`] subresource.
async fn update_part(
    ctx: Ctx<'_>,
    name: &str,
    part: Part,
    body: &[u8],
) -> Result<Response, ApiError> {
    let info = ctx.info();
    let mut req = body_json(ctx.headers, body)?;
    check_type(&mut req, info)?;
    let (req, warnings) =
        typed_roundtrip_checked(req, info, FieldValidation::from_query(ctx.query)?)?;
    match meta_str(&req, "name") {
        n if n == name => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({other}) does not match the name on the URL ({name})"
            )));
        }
    }
    let key = info.key(ctx.ns(), name);
    let writer = ctx.writer();
    let obj = guaranteed_update_admitted(
        ctx.state,
        info,
        &key,
        name,
        ctx.dry_run(),
        ctx.admit(),
        |old| {
            let mut new = merge_part(info, old, &req, part)?;
            crate::apply::track_client_update(&writer, Some(old), &mut new)?;
            Ok(new)
        },
    )
    .await?;
    respond_with_warnings(ctx, StatusCode::OK, &obj, &warnings)
}

pub(crate) async fn update(ctx: Ctx<'_>, body: &[u8]) -> Result<Response, ApiError> {
    let info = ctx.info();
    let Some(name) = ctx.target.name.as_deref() else {
        return Err(ApiError::method_not_allowed());
    };
    if is_scale(ctx.target) {
        return super::scale::update(ctx, name, body).await;
    }
    if let Some(part) = Part::of(ctx.target) {
        return update_part(ctx, name, part, body).await;
    }
    let status_only = check_subresource(ctx.target)?;
    let validation = FieldValidation::from_query(ctx.query)?;
    let mut req = body_json(ctx.headers, body)?;
    check_type(&mut req, info)?;
    if !status_only {
        drop_ignored_status(info, &mut req);
    }
    let (mut req, warnings) = typed_roundtrip_checked(req, info, validation)?;
    if !status_only {
        crate::defaults::apply(info, &mut req, false);
    }
    namespace_of(info, ctx.ns(), &mut req)?;
    match meta_str(&req, "name") {
        n if n == name => {}
        "" => {
            return Err(ApiError::bad_request(
                "name is required in the request body",
            ));
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({other}) does not match the name on the URL ({name})"
            )));
        }
    }
    let key = info.key(ctx.ns(), name);
    let writer = ctx.writer();
    let result = guaranteed_update_admitted(
        ctx.state,
        info,
        &key,
        name,
        ctx.dry_run(),
        ctx.admit(),
        |old| {
            let mut new = merge_update(info, old, &req, status_only)?;
            ctx.node_restriction(
                crate::node_restriction::Operation::Update,
                Some(old),
                Some(&new),
            )?;
            crate::apply::track_client_update(&writer, Some(old), &mut new)?;
            Ok(new)
        },
    )
    .await;
    match result {
        Ok(obj) => respond_with_warnings(ctx, StatusCode::OK, &obj, &warnings),
        Err(e) if e.code == 404 && info.create_on_update && !status_only => {
            if let Some(meta) = metadata_mut(&mut req) {
                meta.remove("resourceVersion");
            }
            ctx.node_restriction(crate::node_restriction::Operation::Create, None, Some(&req))?;
            let (obj, _) = create_object_as(
                ctx.state,
                info,
                ctx.ns(),
                req,
                ctx.dry_run(),
                FieldValidation::Ignore,
                Some(&writer),
            )
            .await?;
            respond_with_warnings(ctx, StatusCode::CREATED, &obj, &warnings)
        }
        Err(e) => Err(e),
    }
}

pub(crate) async fn patch(ctx: Ctx<'_>, body: &[u8]) -> Result<Response, ApiError> {
    let info = ctx.info();
    let Some(name) = ctx.target.name.as_deref() else {
        return Err(ApiError::method_not_allowed());
    };
    if is_scale(ctx.target) {
        return super::scale::patch(ctx, name, body).await;
    }
    let part = Part::of(ctx.target);
    let status_only = part.is_some() || check_subresource(ctx.target)?;
    let ct = content_type(ctx.headers);
    if ct == APPLY_PATCH {
        return apply_patch(ctx, name, status_only, body).await;
    }
    let kind = super::patch::PatchKind::from_media_type(&ct)
        .ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
    if info.custom.is_some() && kind == super::patch::PatchKind::Strategic {
        // Custom resources have no patch strategies: upstream refuses strategic merge patch.
        return Err(ApiError {
            details: Some(json!({})),
            ..ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml",
            )
        });
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let validation = FieldValidation::from_query(ctx.query)?;
    let key = info.key(ctx.ns(), name);
    let mut warnings = Vec::new();
    let writer = ctx.writer();
    let meta = crate::patch_meta::for_resource(info);
    let obj = guaranteed_update_admitted(
        ctx.state,
        info,
        &key,
        name,
        ctx.dry_run(),
        ctx.admit(),
        |old| {
            let mut patched = super::patch::apply(kind, old, &patch, meta)?;
            check_type(&mut patched, info)?;
            let (mut patched, w) = typed_roundtrip_checked(patched, info, validation)?;
            warnings = w;
            if !status_only {
                crate::defaults::apply(info, &mut patched, false);
            }
            // Name and namespace come from the stored object; a changed resourceVersion in the
            // patch is a precondition, checked by merge_update.
            if let Some(meta) = metadata_mut(&mut patched) {
                meta.insert("name".into(), json!(name));
            }
            namespace_of(info, ctx.ns(), &mut patched)?;
            let mut new = match part {
                Some(part) => merge_part(info, old, &patched, part)?,
                None => merge_update(info, old, &patched, status_only)?,
            };
            ctx.node_restriction(
                crate::node_restriction::Operation::Update,
                Some(old),
                Some(&new),
            )?;
            crate::apply::track_client_update(&writer, Some(old), &mut new)?;
            Ok(new)
        },
    )
    .await?;
    respond_with_warnings(ctx, StatusCode::OK, &obj, &warnings)
}

/// The media type of server-side apply.
pub(crate) const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// The body of an apply patch: YAML, of which JSON is a subset, holding an object.
pub(crate) fn apply_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the applied configuration is not an object",
        ));
    }
    Ok(v)
}

/// Server-side apply (`application/apply-patch+yaml`): merges the applied configuration into
/// the live object as `fieldManager`, or creates the object (201) if there is none.
async fn apply_patch(
    ctx: Ctx<'_>,
    name: &str,
    status_only: bool,
    body: &[u8],
) -> Result<Response, ApiError> {
    let info = ctx.info();
    // `fieldManager` is present and well-formed: checked with the other options
    // (`super::options`).
    let force = flag(ctx.query, "force");
    let validation = FieldValidation::from_query(ctx.query)?;
    let mut config = apply_body(body)?;
    if config
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    check_type(&mut config, info)?;
    namespace_of(info, ctx.ns(), &mut config)?;
    match meta_str(&config, "name") {
        n if n == name => {}
        "" => {
            if let Some(meta) = metadata_mut(&mut config) {
                meta.insert("name".into(), json!(name));
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({other}) does not match the name on the URL ({name})"
            )));
        }
    }
    let precondition = request_resource_version(&config)?;
    let writer = ctx.writer();
    let key = info.key(ctx.ns(), name);
    // Create when absent; a create that loses the race to another one applies to it instead.
    for _ in 0..2 {
        let mut warnings = Vec::new();
        let result = guaranteed_update_admitted(
            ctx.state,
            info,
            &key,
            name,
            ctx.dry_run(),
            ctx.admit(),
            |old| {
                if let Some(rv) = precondition
                    && meta_str(old, "resourceVersion") != rv.to_string()
                {
                    return Err(ApiError::conflict(info, name));
                }
                let merged = crate::apply::apply(&writer, Some(old), &config, force)?;
                let mut merged = merged;
                check_type(&mut merged, info)?;
                let (mut merged, w) = typed_roundtrip_checked(merged, info, validation)?;
                warnings = w;
                if !status_only {
                    crate::defaults::apply(info, &mut merged, false);
                }
                if let Some(meta) = metadata_mut(&mut merged) {
                    meta.insert("name".into(), json!(name));
                }
                namespace_of(info, ctx.ns(), &mut merged)?;
                // `/status` keeps everything but the status from the stored object: the managed
                // fields are apply's.
                let managed = merged.pointer("/metadata/managedFields").cloned();
                let mut new = merge_update(info, old, &merged, status_only)?;
                ctx.node_restriction(
                    crate::node_restriction::Operation::Update,
                    Some(old),
                    Some(&new),
                )?;
                if let Some(meta) = metadata_mut(&mut new) {
                    match managed {
                        Some(m) => meta.insert("managedFields".into(), m),
                        None => meta.remove("managedFields"),
                    };
                }
                Ok(new)
            },
        )
        .await;
        match result {
            Ok(obj) => return respond_with_warnings(ctx, StatusCode::OK, &obj, &warnings),
            Err(e) if e.code == 404 && !status_only && precondition.is_none() => {
                let merged = crate::apply::apply(&writer, None, &config, force)?;
                ctx.node_restriction(
                    crate::node_restriction::Operation::Create,
                    None,
                    Some(&merged),
                )?;
                match create_object_as(
                    ctx.state,
                    info,
                    ctx.ns(),
                    merged,
                    ctx.dry_run(),
                    validation,
                    None,
                )
                .await
                {
                    Ok((obj, warnings)) => {
                        return respond_with_warnings(ctx, StatusCode::CREATED, &obj, &warnings);
                    }
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::conflict(info, name))
}

// ---------------------------------------------------------------------------------------------
// delete

/// Upstream's CSR `PrepareForCreate`: who asks for the certificate is the requesting user,
/// whatever the body says.
fn set_csr_requester(obj: &mut Value, user: &crate::auth::UserInfo) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    for f in ["username", "uid", "groups", "extra"] {
        spec.remove(f);
    }
    spec.insert("username".into(), json!(user.name));
    if !user.uid.is_empty() {
        spec.insert("uid".into(), json!(user.uid));
    }
    if !user.groups.is_empty() {
        spec.insert("groups".into(), json!(user.groups));
    }
    if !user.extra.is_empty() {
        spec.insert("extra".into(), json!(user.extra));
    }
}

/// Namespaces that cannot be deleted, as upstream.
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// The parts of `meta/v1` `DeleteOptions` the server acts on.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeleteOptions {
    #[serde(default)]
    grace_period_seconds: Option<i64>,
    #[serde(default)]
    preconditions: Option<Preconditions>,
    #[serde(default)]
    pub(crate) dry_run: Option<Vec<String>>,
    /// `Orphan`, `Background` or `Foreground`.
    #[serde(default)]
    propagation_policy: Option<String>,
    /// Deprecated form of `propagationPolicy: Orphan` (true) / `Background` (false).
    #[serde(default)]
    orphan_dependents: Option<bool>,
}

/// The garbage collector's finalizers (it removes them when it has done their work).
const ORPHAN_FINALIZER: &str = "orphan";
const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

impl DeleteOptions {
    pub(crate) fn is_dry_run(&self) -> bool {
        self.dry_run
            .as_ref()
            .is_some_and(|d| d.iter().any(|x| x == "All"))
    }

    /// The finalizers a deletion with these options leaves on `current` (upstream's
    /// `deletionFinalizersForGarbageCollection`): `Orphan` adds `orphan`, `Foreground` adds
    /// `foregroundDeletion`, each dropping the other; `Background` drops both; no policy
    /// keeps what is there.
    fn gc_finalizers(&self, current: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        let policy = match (self.propagation_policy.as_deref(), self.orphan_dependents) {
            (Some(p), Some(_)) => {
                return Err(options::invalid_options(
                    options::Write::Delete,
                    vec![crate::validation::invalid(
                        "propagationPolicy",
                        &crate::validation::q(p),
                        "orphanDependents and deletionPropagation cannot be both set",
                    )],
                ));
            }
            (Some(p @ ("Orphan" | "Background" | "Foreground")), None) => Some(p),
            (Some(p), None) => {
                return Err(options::invalid_options(
                    options::Write::Delete,
                    vec![crate::validation::not_supported(
                        "propagationPolicy",
                        &crate::validation::q(p),
                        &["Foreground", "Background", "Orphan", "nil"],
                    )],
                ));
            }
            (None, Some(true)) => Some("Orphan"),
            (None, Some(false)) => Some("Background"),
            (None, None) => None,
        };
        let Some(policy) = policy else {
            return Ok(current);
        };
        let mut out: Vec<Value> = current
            .into_iter()
            .filter(|f| f != ORPHAN_FINALIZER && f != FOREGROUND_FINALIZER)
            .collect();
        match policy {
            "Orphan" => out.push(json!(ORPHAN_FINALIZER)),
            "Foreground" => out.push(json!(FOREGROUND_FINALIZER)),
            _ => {}
        }
        Ok(out)
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(ctx: Ctx<'_>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut opts: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        serde_json::from_value(body_json(ctx.headers, body)?)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    if let Some(g) = ctx.query.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = ctx.query.get("propagationPolicy") {
        opts.propagation_policy = Some(p.clone());
    }
    if let Some(o) = ctx.query.get("orphanDependents") {
        opts.orphan_dependents = Some(o == "true");
    }
    if ctx.dry_run() {
        opts.dry_run = Some(vec!["All".into()]);
    }
    if let Some(cause) = opts.dry_run.as_deref().and_then(options::dry_run_values) {
        return Err(options::invalid_options(
            options::Write::Delete,
            vec![cause],
        ));
    }
    Ok(opts)
}

pub(crate) async fn delete(ctx: Ctx<'_>, body: &[u8]) -> Result<Response, ApiError> {
    let info = ctx.info();
    if ctx.target.subresource.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    let opts = delete_options(ctx, body)?;
    // Upstream gives mutating webhooks no object on deletes (validating ones get the stored one).
    crate::admission_webhook::mutate(ctx.state, info, Operation::Delete, None, None).await?;
    let Some(name) = ctx.target.name.as_deref() else {
        return delete_collection(ctx, &opts).await;
    };
    if let Some(old) = ctx.stored_for_node(name).await? {
        ctx.node_restriction(crate::node_restriction::Operation::Delete, Some(&old), None)?;
    }
    let (obj, deleted) = delete_object(ctx.state, info, ctx.ns(), name, &opts).await?;
    if info.kind == "Pod" || info.kind == "Namespace" || !deleted {
        return ok(StatusCode::OK, &obj);
    }
    let mut details = json!({
        "name": name,
        "kind": info.plural,
        "uid": meta_str(&obj, "uid"),
    });
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    ok(
        StatusCode::OK,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }),
    )
}

/// Deletes one object, or marks it for deletion when finalizers or a pod's graceful
/// termination hold it. Returns the object's last state and whether it is gone.
pub(crate) async fn delete_object(
    state: &AppState,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(Value, bool), ApiError> {
    if info.kind == "Namespace" && IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(
            info,
            name,
            "this namespace may not be deleted",
        ));
    }
    let dry_run = opts.is_dry_run();
    let key = info.key(ns, name);
    for _ in 0..MAX_RETRIES {
        let (_, kv) = state.store.get(&key, 0).await?;
        let kv = kv.ok_or_else(|| ApiError::not_found(info, name))?;
        let mut obj = decode_served(state, info, &kv).await?;
        if let Some(p) = &opts.preconditions {
            let uid = meta_str(&obj, "uid");
            if let Some(want) = p.uid.as_deref().filter(|w| *w != uid) {
                return Err(ApiError {
                    details: Some(json!({"name": name, "kind": info.plural})),
                    ..ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {want}, UID in object meta: {uid}",
                            crate::status::qualified(info)
                        ),
                    )
                });
            }
            let rv = meta_str(&obj, "resourceVersion");
            if let Some(want) = p.resource_version.as_deref().filter(|w| *w != rv) {
                return Err(ApiError {
                    details: Some(json!({"name": name, "kind": info.plural})),
                    ..ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}",
                            crate::status::qualified(info)
                        ),
                    )
                });
            }
        }
        crate::admission_webhook::validate(state, info, Operation::Delete, None, Some(&obj))
            .await?;
        if info.group.is_empty() && info.kind == "Namespace" {
            match namespace_delete_step(info, name, &mut obj, opts)? {
                NamespaceStep::Delete => {}
                NamespaceStep::Keep => return Ok((obj, false)),
                NamespaceStep::Write if dry_run => return Ok((obj, false)),
                NamespaceStep::Write => {
                    match state
                        .store
                        .update(
                            &key,
                            encode_stored(state, info, &obj).await?,
                            kv.mod_revision,
                            0,
                        )
                        .await?
                    {
                        WriteOutcome::Written { revision } => {
                            set_resource_version(&mut obj, revision);
                            return Ok((obj, false));
                        }
                        WriteOutcome::Conflict { .. } => continue,
                    }
                }
            }
        }
        // A CRD keeps its custom resources' cleanup finalizer until they are gone.
        if is_crd(info) && meta_str(&obj, "deletionTimestamp").is_empty() {
            crate::crd::prepare_delete(&mut obj);
        }
        // Deferred deletion: finalizers (the garbage collector's from propagationPolicy
        // included), or a scheduled pod with a grace period.
        let grace = graceful_period(info, &obj, opts);
        let old_finalizers = finalizers(&obj);
        let new_finalizers = opts.gc_finalizers(old_finalizers.clone())?;
        if !new_finalizers.is_empty() || grace.is_some() {
            let deleting = !meta_str(&obj, "deletionTimestamp").is_empty();
            if deleting && new_finalizers == old_finalizers {
                // Upstream's BeforeDelete: a pending graceful deletion may only be shortened,
                // to 0 too (a pod its finalizers still hold records the kubelet's grace 0;
                // without finalizers, grace 0 deletes below).
                match pod_grace_period(info, &obj, opts).zip(deletion_grace_period(&obj)) {
                    Some((g, current)) if g < current => shorten_deletion(&mut obj, g, current),
                    _ => return Ok((obj, false)),
                }
            }
            if let Some(meta) = metadata_mut(&mut obj) {
                if !deleting {
                    let secs = grace.unwrap_or(0);
                    meta.insert(
                        "deletionTimestamp".into(),
                        json!(crate::time::rfc3339_after(secs)),
                    );
                    meta.insert("deletionGracePeriodSeconds".into(), json!(secs));
                }
                if new_finalizers.is_empty() {
                    meta.remove("finalizers");
                } else {
                    meta.insert("finalizers".into(), json!(new_finalizers));
                }
            }
            if dry_run {
                return Ok((obj, false));
            }
            match state
                .store
                .update(
                    &key,
                    encode_stored(state, info, &obj).await?,
                    kv.mod_revision,
                    0,
                )
                .await?
            {
                WriteOutcome::Written { revision } => {
                    set_resource_version(&mut obj, revision);
                    return Ok((obj, false));
                }
                WriteOutcome::Conflict { .. } => continue,
            }
        }
        if dry_run {
            return Ok((obj, true));
        }
        let outcome = if is_service(info) {
            crate::services::delete(state, &key, kv.mod_revision, &obj).await?
        } else {
            state.store.delete(&key, Some(kv.mod_revision)).await?
        };
        match outcome {
            WriteOutcome::Written { revision } => {
                tracing::debug!(name, revision, "deleted");
                return Ok((obj, true));
            }
            WriteOutcome::Conflict { .. } => continue,
        }
    }
    Err(ApiError::conflict(info, name))
}

/// The grace period of a pending graceful deletion (`None`: not deleting gracefully).
fn deletion_grace_period(obj: &Value) -> Option<i64> {
    obj.get("metadata")
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .filter(|g| *g > 0)
}

/// A shorter grace period for a pending graceful deletion: the deletion timestamp moves to the
/// time of the first request plus the new period, as upstream's.
fn shorten_deletion(obj: &mut Value, grace: i64, current: i64) {
    let ts = meta_str(obj, "deletionTimestamp");
    let moved = crate::time::parse(ts)
        .and_then(|t| {
            t.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                grace - current,
            ))
            .ok()
        })
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| crate::time::rfc3339_after(grace));
    if let Some(meta) = metadata_mut(obj) {
        meta.insert("deletionTimestamp".into(), json!(moved));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
}

/// The grace period of a pod's deletion: only a pod bound to a node waits for its kubelet.
fn graceful_period(info: &ResourceInfo, obj: &Value, opts: &DeleteOptions) -> Option<i64> {
    pod_grace_period(info, obj, opts).filter(|g| *g > 0)
}

/// The grace period a DELETE asks of a pod (upstream's pod `CheckGracefulDelete`): the
/// request's, else the pod's `terminationGracePeriodSeconds` (30 by default); 0 for a pod not
/// bound to a node or finished. `None` for other kinds.
fn pod_grace_period(info: &ResourceInfo, obj: &Value, opts: &DeleteOptions) -> Option<i64> {
    if info.kind != "Pod" || !info.group.is_empty() {
        return None;
    }
    let node = obj
        .get("spec")
        .and_then(|s| s.get("nodeName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let phase = obj
        .get("status")
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() || phase == "Succeeded" || phase == "Failed" {
        return Some(0);
    }
    let default = obj
        .get("spec")
        .and_then(|s| s.get("terminationGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .unwrap_or(30);
    // A negative request counts as 1 s, as upstream's BeforeDelete.
    let asked = opts.grace_period_seconds.map(|g| if g < 0 { 1 } else { g });
    Some(asked.unwrap_or(default).max(0))
}

/// What a DELETE does to a namespace (upstream's namespace REST `Delete`).
enum NamespaceStep {
    /// Store `obj` as changed: now Terminating (deletionTimestamp, phase), finalizers set.
    Write,
    /// Already terminating and held by metadata finalizers: nothing to write.
    Keep,
    /// Nothing holds it: delete the object.
    Delete,
}

/// The first DELETE of a namespace sets `deletionTimestamp` and phase `Terminating` and leaves
/// the emptying to the namespace controller, which removes its `kubernetes` finalizer from
/// `spec.finalizers` through `/finalize` when done; that update deletes the namespace. A DELETE
/// while `spec.finalizers` is not empty is a 409, as upstream. A namespace that nothing holds
/// (no spec or metadata finalizers) is marked Terminating all the same, and deleted by the
/// next DELETE (or update), as upstream's namespace REST does.
fn namespace_delete_step(
    info: &ResourceInfo,
    name: &str,
    obj: &mut Value,
    opts: &DeleteOptions,
) -> Result<NamespaceStep, ApiError> {
    let old_finalizers = finalizers(obj);
    // The options are checked, but a namespace gets no `orphan`/`foregroundDeletion`
    // finalizer: rk3s-controller's garbage collector does not watch namespaces, so nothing
    // would remove it (emptying is the namespace controller's, always in the background).
    opts.gc_finalizers(old_finalizers.clone())?;
    let new_finalizers = old_finalizers.clone();
    let deleting = !meta_str(obj, "deletionTimestamp").is_empty();
    let held = has_spec_finalizers(obj);
    if deleting {
        if held {
            return Err(ApiError {
                details: Some(json!({"name": name, "kind": info.plural})),
                ..ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on namespaces \"{name}\": The system is \
                         ensuring all content is removed from this namespace.  Upon completion, \
                         this namespace will automatically be purged by the system."
                    ),
                )
            });
        }
        if new_finalizers.is_empty() {
            return Ok(NamespaceStep::Delete);
        }
        if new_finalizers == old_finalizers {
            return Ok(NamespaceStep::Keep);
        }
    }
    if let Some(meta) = metadata_mut(obj) {
        if !deleting {
            meta.insert(
                "deletionTimestamp".into(),
                json!(crate::time::now_rfc3339()),
            );
        }
        if new_finalizers.is_empty() {
            meta.remove("finalizers");
        } else {
            meta.insert("finalizers".into(), json!(new_finalizers));
        }
    }
    if let Some(o) = obj.as_object_mut() {
        let status = o.entry("status").or_insert_with(|| json!({}));
        status["phase"] = json!("Terminating");
    }
    Ok(NamespaceStep::Write)
}

async fn delete_collection(ctx: Ctx<'_>, opts: &DeleteOptions) -> Result<Response, ApiError> {
    let info = ctx.info();
    if !info.has_verb("deletecollection") || (info.namespaced && ctx.ns().is_none()) {
        return Err(ApiError::method_not_allowed());
    }
    let selectors = Selectors::from_query(info, ctx.query)?;
    let mut all = ctx.query.clone();
    all.remove("limit");
    all.remove("continue");
    let page = list_items(ctx.state, info, ctx.ns(), &selectors, &all).await?;
    let mut deleted = Vec::new();
    for item in page.items {
        let item = item.object();
        let ns = (!item.namespace.is_empty()).then_some(&*item.namespace);
        match delete_object(ctx.state, info, ns, &item.name, opts).await {
            Ok((obj, _)) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    ok(
        StatusCode::OK,
        &json!({
            "kind": info.list_kind,
            "apiVersion": info.api_version(),
            "metadata": {},
            "items": deleted,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_policy_sets_the_garbage_collector_finalizers() {
        let opts = |p: Option<&str>, o: Option<bool>| DeleteOptions {
            propagation_policy: p.map(str::to_string),
            orphan_dependents: o,
            ..DeleteOptions::default()
        };
        let other = json!("example.com/keep");
        let f = |o: DeleteOptions, cur: Vec<Value>| o.gc_finalizers(cur).map_err(|e| e.code);
        assert_eq!(
            f(
                opts(Some("Foreground"), None),
                vec![other.clone(), json!("orphan")]
            ),
            Ok(vec![other.clone(), json!("foregroundDeletion")])
        );
        assert_eq!(
            f(opts(None, Some(true)), vec![json!("foregroundDeletion")]),
            Ok(vec![json!("orphan")])
        );
        assert_eq!(
            f(
                opts(Some("Background"), None),
                vec![json!("orphan"), other.clone()]
            ),
            Ok(vec![other.clone()])
        );
        assert_eq!(
            f(opts(None, None), vec![json!("orphan")]),
            Ok(vec![json!("orphan")])
        );
        assert_eq!(f(opts(Some("Sideways"), None), vec![]), Err(422));
        assert_eq!(f(opts(Some("Orphan"), Some(true)), vec![]), Err(422));
    }

    #[test]
    fn jobs_get_a_generated_selector() {
        let jobs = REGISTRY.find("batch", "v1", "jobs").expect("jobs");
        let mut job = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {}}}});
        set_system_fields(jobs, &mut job);
        let uid = job["metadata"]["uid"].as_str().expect("uid").to_string();
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            uid.as_str()
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "j"
        );
        let mut manual = json!({"metadata": {"name": "m"},
            "spec": {"manualSelector": true, "selector": {"matchLabels": {"a": "b"}}}});
        set_system_fields(jobs, &mut manual);
        assert_eq!(manual["spec"]["selector"]["matchLabels"], json!({"a": "b"}));
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "default/cm-7");
        assert_eq!(
            decode_continue(&t).expect("valid"),
            (42, "default/cm-7".to_string())
        );
        assert!(decode_continue("!!!").is_err());
        let evil = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"v":"meta.k8s.io/v1","rv":3,"start":"../secrets/x"}"#);
        assert!(decode_continue(&evil).is_err());
    }

    #[test]
    fn update_keeps_system_fields_and_bumps_generation_on_spec_change() {
        let deploy = REGISTRY
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let mut spec = json!({"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [
                {"name": "c", "image": "nginx"}]}}});
        let old = json!({"metadata": {"name": "d", "namespace": "n", "uid": "u",
            "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1, "resourceVersion": "5"},
            "spec": spec.clone(), "status": {"replicas": 1}});
        spec["replicas"] = json!(2);
        let mut req = json!({"metadata": {"name": "d", "namespace": "n", "resourceVersion": "5"},
            "spec": spec, "status": {"replicas": 9}});
        // As requests reach it: defaulted (the stored object was, too).
        let mut old = old;
        crate::defaults::apply(deploy, &mut old, true);
        crate::defaults::apply(deploy, &mut req, false);
        let new = merge_update(deploy, &old, &req, false).expect("update");
        assert_eq!(new["metadata"]["uid"], "u");
        assert_eq!(new["metadata"]["generation"], 2);
        assert_eq!(new["status"]["replicas"], 1, "main resource keeps status");
        let st = merge_update(deploy, &old, &req, true).expect("status update");
        assert_eq!(st["spec"]["replicas"], 1);
        assert_eq!(st["status"]["replicas"], 9);
        let stale = json!({"metadata": {"name": "d", "resourceVersion": "4"}});
        let err = merge_update(deploy, &old, &stale, false).expect_err("stale");
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }
}
