//! OpenAPI v3: `/openapi/v3` (the index of group-version documents) and one document per group
//! version with each resource's paths and operations (`x-kubernetes-group-version-kind`, query
//! parameters) and the component schemas of its types, generated from k8s-openapi's
//! `JsonSchema` impls, with `x-kubernetes-group-version-kind` on each resource's schema.
//!
//! Every definition's properties carry upstream's patch and list extensions
//! (`x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`, `x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`) from [`crate::patch_meta`], and each
//! patch operation lists the patch media types it accepts: kubectl computes `apply` patches
//! from them.
//!
//! kubectl reads it to learn that the server validates fields itself (`fieldValidation`) and
//! for `kubectl explain`.
//!
//! `/openapi/v2` is the same in one Swagger 2.0 document (`#/definitions/` references), as
//! JSON or as the gnostic protobuf client-go asks for ([`gnostic`]; kubectl validates `List`
//! documents with it).

mod gnostic;

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::registry::{GroupVersion, REGISTRY, ResourceInfo};
use crate::rest::json_response;
use crate::server::AppState;
use crate::status::ApiError;

/// The path of a group version's document, under `/openapi/v3/`.
fn doc_path(g: &GroupVersion) -> String {
    if g.group.is_empty() {
        format!("api/{}", g.version)
    } else {
        format!("apis/{}/{}", g.group, g.version)
    }
}

/// One served document: its path under `/openapi/v3/`, body and hash.
struct Doc {
    path: String,
    body: Vec<u8>,
    hash: String,
}

/// The documents, built once (the registry is static).
static DOCS: LazyLock<Vec<Doc>> = LazyLock::new(|| {
    REGISTRY
        .groups
        .iter()
        .map(|g| {
            let doc = document(g);
            Doc {
                path: doc_path(g),
                hash: hash_of(&doc),
                body: serde_json::to_vec(&doc).unwrap_or_default(),
            }
        })
        .collect()
});

/// The documents of the custom resource group versions served now (built per request: they
/// change with CRDs, and are small).
fn custom_docs(state: &AppState) -> Vec<Doc> {
    state
        .crds
        .snapshot()
        .groups
        .iter()
        .map(|g| {
            let doc = document(g);
            Doc {
                path: doc_path(g),
                hash: hash_of(&doc),
                body: serde_json::to_vec(&doc).unwrap_or_default(),
            }
        })
        .collect()
}

/// `/openapi/v3`.
pub(crate) async fn index(State(state): State<AppState>) -> Response {
    let mut paths = Map::new();
    for d in DOCS.iter().chain(custom_docs(&state).iter()) {
        let url = format!("/openapi/v3/{}?hash={}", d.path, d.hash);
        paths.insert(d.path.clone(), json!({ "serverRelativeURL": url }));
    }
    json_response(StatusCode::OK, &json!({ "paths": paths }))
}

/// `/openapi/v3/{*path}`.
pub(crate) async fn group_version(
    State(state): State<AppState>,
    Path(path): Path<String>,
) -> Response {
    let path = path.trim_end_matches('/');
    let custom;
    let found = match DOCS.iter().find(|d| d.path == path) {
        Some(d) => Some(d),
        None => {
            custom = custom_docs(&state);
            custom.iter().find(|d| d.path == path)
        }
    };
    match found {
        Some(d) => (
            StatusCode::OK,
            [
                (axum::http::header::CONTENT_TYPE, "application/json"),
                (axum::http::header::ETAG, d.hash.as_str()),
            ],
            d.body.clone(),
        )
            .into_response(),
        None => ApiError::no_route().into_response(),
    }
}

/// A stable hash of a document (FNV-1a), for the index's cache-busting `hash` parameter.
fn hash_of(doc: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in doc.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

fn param(name: &str) -> Value {
    json!({ "name": name, "in": "query", "schema": { "type": "string" }, "uniqueItems": true })
}

/// The patch media types the apiserver accepts.
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];
/// Custom resources take no strategic merge patch (no patch metadata): kubectl then sends a
/// JSON merge patch for `apply`.
const CUSTOM_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];

/// The patch media types a resource accepts.
fn patch_types(info: &ResourceInfo) -> &'static [&'static str] {
    if info.custom.is_some() {
        CUSTOM_PATCH_TYPES
    } else {
        PATCH_TYPES
    }
}
const PATCH_SCHEMA: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";

fn operation(
    info: &ResourceInfo,
    verb: &str,
    action: &str,
    params: &[&str],
    schema: &Value,
) -> Value {
    json!({
        "operationId": format!("{verb}{}", info.kind),
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": { "200": {
            "description": "OK",
            "content": { "application/json": { "schema": schema } },
        } },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": info.group, "version": info.version, "kind": info.kind,
        },
    })
}

const WRITE_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
const LIST_PARAMS: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];

/// The patch operation, with its request body: the accepted patch media types (kubectl
/// computes a strategic merge patch only when `application/strategic-merge-patch+json` is
/// listed).
fn patch_operation(info: &ResourceInfo, schema: &Value) -> Value {
    let mut op = operation(
        info,
        "patch",
        "patch",
        &[
            "dryRun",
            "fieldManager",
            "fieldValidation",
            "force",
            "pretty",
        ],
        schema,
    );
    let body_schema = json!({ "$ref": format!("#/components/schemas/{PATCH_SCHEMA}") });
    let content: Map<String, Value> = patch_types(info)
        .iter()
        .map(|t| ((*t).to_string(), json!({ "schema": body_schema })))
        .collect();
    op["requestBody"] = json!({ "content": content, "required": true });
    op
}

/// The kind the `scale` subresource serves.
const SCALE_GVK: (&str, &str, &str) = ("autoscaling", "v1", "Scale");

/// The read/replace/patch operations of a `status` or `scale` subresource (OpenAPI v3), with
/// the kind the subresource serves (`gvk`, the resource's own when `None`).
fn subresource_ops(
    info: &ResourceInfo,
    suffix: &str,
    schema: &Value,
    gvk: Option<(&str, &str, &str)>,
) -> Value {
    let mut ops = json!({
        "get": operation(info, "read", "get", &["pretty"], schema),
        "put": operation(info, "replace", "put", WRITE_PARAMS, schema),
        "patch": patch_operation(info, schema),
    });
    for (_, op) in ops.as_object_mut().into_iter().flatten() {
        if let Some(id) = op.get("operationId").and_then(Value::as_str) {
            op["operationId"] = json!(format!("{id}{suffix}"));
        }
        if let Some((group, version, kind)) = gvk {
            op["x-kubernetes-group-version-kind"] =
                json!({"group": group, "version": version, "kind": kind});
        }
    }
    ops
}

/// The component name of a custom resource's schema, as upstream builds it: the reversed group,
/// the version and the kind (`com.example.stable.v1.CronTab`).
fn custom_schema_name(r: &ResourceInfo) -> String {
    let group: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), r.version, r.kind)
}

/// A custom resource's schema: its CRD's `openAPIV3Schema` with `apiVersion`, `kind` and the
/// standard `metadata` added.
fn custom_schema(
    c: &crate::crd::CustomVersion,
    generator: &mut k8s_openapi::schemars::SchemaGenerator,
) -> Value {
    let mut schema = c
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    let meta = Value::from(
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(),
    );
    if !schema.get("properties").is_some_and(Value::is_object) {
        schema["properties"] = json!({});
    }
    schema["properties"]["apiVersion"] = json!({
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object.",
    });
    schema["properties"]["kind"] = json!({
        "type": "string",
        "description": "Kind is a string value representing the REST resource this object represents.",
    });
    schema["properties"]["metadata"] = json!({
        "allOf": [meta],
        "description": "Standard object's metadata.",
    });
    schema
}

fn document(g: &GroupVersion) -> Value {
    let base = if g.group.is_empty() {
        format!("/api/{}", g.version)
    } else {
        format!("/apis/{}/{}", g.group, g.version)
    };
    let mut generator =
        k8s_openapi::schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut gvks = Vec::new();
    let mut custom_schemas = Vec::new();
    for r in &g.resources {
        let schema = match &r.custom {
            Some(c) => {
                let name = custom_schema_name(r);
                custom_schemas.push((name.clone(), custom_schema(c, &mut generator)));
                json!({ "$ref": format!("#/components/schemas/{name}") })
            }
            None => Value::from((r.schema)(&mut generator)),
        };
        if let Some(name) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|s| s.rsplit('/').next())
        {
            gvks.push((name.to_string(), r));
        }
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(r, "list", "list", LIST_PARAMS, &json!({})),
                "post": operation(r, "create", "post", WRITE_PARAMS, &schema),
            }),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(r, "read", "get", &["pretty"], &schema),
                "put": operation(r, "replace", "put", WRITE_PARAMS, &schema),
                "patch": patch_operation(r, &schema),
                "delete": operation(r, "delete", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"], &json!({})),
            }),
        );
        if r.status_subresource {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                subresource_ops(r, "Status", &schema, None),
            );
        }
        if r.scale_subresource {
            let scale =
                Value::from(generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>());
            paths.insert(
                format!("{collection}/{{name}}/scale"),
                subresource_ops(r, "Scale", &scale, Some(SCALE_GVK)),
            );
        }
    }
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Patch>();
    let mut schemas = generator.take_definitions(true);
    add_patch_extensions(&mut schemas);
    for (name, s) in custom_schemas {
        schemas.insert(name, s);
    }
    for (name, r) in gvks {
        if let Some(s) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{ "group": r.group, "version": r.version, "kind": r.kind }]),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": crate::health::GIT_VERSION },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

/// The built-in part of `/openapi/v2`, built once.
static V2_BUILTIN: LazyLock<Value> = LazyLock::new(document_v2);

/// `/openapi/v2` (JSON and gnostic protobuf) for one CRD snapshot: rebuilt when the served
/// custom resources change, shared by every request until then.
struct V2Docs {
    snapshot: Arc<crate::crd::Snapshot>,
    json: Arc<Vec<u8>>,
    protobuf: Arc<Vec<u8>>,
}

static V2_CACHE: Mutex<Option<V2Docs>> = Mutex::new(None);

/// The `/openapi/v2` bodies (JSON, protobuf) for the custom resources served now.
fn v2_docs(state: &AppState) -> (Arc<Vec<u8>>, Arc<Vec<u8>>) {
    let snapshot = state.crds.snapshot();
    let mut cache = V2_CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = cache.as_ref()
        && Arc::ptr_eq(&c.snapshot, &snapshot)
    {
        return (c.json.clone(), c.protobuf.clone());
    }
    let mut doc = V2_BUILTIN.clone();
    add_custom_v2(&mut doc, &snapshot);
    let json = Arc::new(serde_json::to_vec(&doc).unwrap_or_default());
    let protobuf = Arc::new(gnostic::encode_document(&doc));
    *cache = Some(V2Docs {
        snapshot,
        json: json.clone(),
        protobuf: protobuf.clone(),
    });
    (json, protobuf)
}

/// A CRD schema as Swagger 2.0 can carry it (upstream's v2 publishing drops what v2 has no
/// words for): no `allOf`/`anyOf`/`oneOf`/`not`, no `nullable` (a nullable field loses its
/// `type`), no type on `x-kubernetes-int-or-string` fields.
fn crd_schema_to_v2(v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        for k in ["allOf", "anyOf", "oneOf", "not"] {
            m.remove(k);
        }
        if m.remove("nullable") == Some(Value::Bool(true)) {
            m.remove("type");
        }
        if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            m.remove("type");
        }
        if let Some(props) = m.get_mut("properties").and_then(Value::as_object_mut) {
            props.values_mut().for_each(crd_schema_to_v2);
        }
        for k in ["items", "additionalProperties"] {
            if let Some(sub) = m.get_mut(k).filter(|s| s.is_object()) {
                crd_schema_to_v2(sub);
            }
        }
    }
}

/// Adds the served custom resources' paths and definitions to a Swagger 2.0 document.
fn add_custom_v2(doc: &mut Value, snapshot: &crate::crd::Snapshot) {
    let mut generator =
        k8s_openapi::schemars::generate::SchemaSettings::openapi3().into_generator();
    for g in &snapshot.groups {
        let base = format!("/apis/{}/{}", g.group, g.version);
        for r in &g.resources {
            let Some(c) = &r.custom else { continue };
            let name = custom_schema_name(r);
            let mut crd_schema = c.schema.clone().unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
            crd_schema_to_v2(&mut crd_schema);
            let v2_version = crate::crd::CustomVersion {
                schema: Some(crd_schema),
                columns: Vec::new(),
                scale: None,
                terminating: false,
                storage_version: c.storage_version,
            };
            let mut def = custom_schema(&v2_version, &mut generator);
            // `$ref` siblings are ignored in v2: the metadata reference stands alone.
            if let Some(meta) = def
                .get_mut("properties")
                .and_then(|p| p.get_mut("metadata"))
                && let Some(reference) = meta.get("allOf").and_then(|a| a.get(0)).cloned()
            {
                *meta = reference;
            }
            def["x-kubernetes-group-version-kind"] =
                json!([{ "group": r.group, "version": r.version, "kind": r.kind }]);
            v3_refs_to_v2(&mut def);
            doc["definitions"][&name] = def;
            let schema = json!({ "$ref": format!("#/definitions/{name}") });
            let collection = if r.namespaced {
                format!("{base}/namespaces/{{namespace}}/{}", r.plural)
            } else {
                format!("{base}/{}", r.plural)
            };
            let paths = &mut doc["paths"];
            paths[&collection] = json!({
                "get": v2_operation(r, "list", "list", &json!({})),
                "post": v2_operation(r, "create", "post", &schema),
            });
            paths[format!("{collection}/{{name}}")] = json!({
                "get": v2_operation(r, "read", "get", &schema),
                "put": v2_operation(r, "replace", "put", &schema),
                "patch": v2_operation(r, "patch", "patch", &schema),
                "delete": v2_operation(r, "delete", "delete", &json!({})),
            });
            if r.status_subresource {
                paths[format!("{collection}/{{name}}/status")] = json!({
                    "get": v2_operation(r, "readStatus", "get", &schema),
                    "put": v2_operation(r, "replaceStatus", "put", &schema),
                    "patch": v2_operation(r, "patchStatus", "patch", &schema),
                });
            }
            if r.scale_subresource {
                let scale = json!({ "$ref": "#/definitions/io.k8s.api.autoscaling.v1.Scale" });
                let mut ops = json!({
                    "get": v2_operation(r, "readScale", "get", &scale),
                    "put": v2_operation(r, "replaceScale", "put", &scale),
                    "patch": v2_operation(r, "patchScale", "patch", &scale),
                });
                for (_, op) in ops.as_object_mut().into_iter().flatten() {
                    op["x-kubernetes-group-version-kind"] =
                        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
                }
                paths[format!("{collection}/{{name}}/scale")] = ops;
            }
        }
    }
    // The ObjectMeta (and what it refers to) the custom definitions point at are built-in
    // definitions already; anything new the generator produced is added.
    let mut extra = Value::Object(generator.take_definitions(true));
    v3_refs_to_v2(&mut extra);
    if let (Some(defs), Some(extra)) = (doc["definitions"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            defs.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// The protobuf media type of `/openapi/v2`, as upstream answers it (Go's `mime` package cannot
/// parse the `@v1.0` form client-go still asks for, [`V2_PROTOBUF_TYPE_DEPRECATED`]).
const V2_PROTOBUF_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const V2_PROTOBUF_TYPE_DEPRECATED: &str =
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// `/openapi/v2`: Swagger 2.0 as JSON, or as gnostic protobuf for clients that ask for it
/// first (client-go does); 406 when neither is acceptable.
pub(crate) async fn v2(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut chosen = accept.trim().is_empty().then_some("application/json");
    for t in accept.split(',') {
        if chosen.is_some() {
            break;
        }
        chosen = match t.split(';').next().unwrap_or("").trim() {
            "application/json" | "application/*" | "*/*" => Some("application/json"),
            V2_PROTOBUF_TYPE | V2_PROTOBUF_TYPE_DEPRECATED => Some(V2_PROTOBUF_TYPE),
            _ => None,
        };
    }
    let (json_body, protobuf_body) = v2_docs(&state);
    let body = match chosen {
        Some("application/json") => json_body.as_ref().clone(),
        Some(_) => protobuf_body.as_ref().clone(),
        None => {
            return ApiError::new(
                406,
                "NotAcceptable",
                format!(
                    "only the following media types are accepted: application/json, {V2_PROTOBUF_TYPE}"
                ),
            )
            .into_response();
        }
    };
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            chosen.unwrap_or("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Rewrites OpenAPI v3 component references into Swagger 2.0 definition references.
fn v3_refs_to_v2(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                *r = format!("#/definitions/{name}");
            }
            m.values_mut().for_each(v3_refs_to_v2);
        }
        Value::Array(a) => a.iter_mut().for_each(v3_refs_to_v2),
        _ => {}
    }
}

fn v2_operation(info: &ResourceInfo, verb: &str, action: &str, schema: &Value) -> Value {
    let mut op = json!({
        "operationId": format!("{verb}{}", info.kind),
        "consumes": ["*/*"],
        "produces": ["application/json", "application/yaml"],
        "schemes": ["https"],
        "responses": { "200": { "description": "OK", "schema": schema } },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": info.group, "version": info.version, "kind": info.kind,
        },
    });
    if verb == "patch" {
        op["consumes"] = json!(patch_types(info));
    }
    op
}

/// The Swagger 2.0 document: every served resource's paths and all definitions.
fn document_v2() -> Value {
    let mut generator =
        k8s_openapi::schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut gvks: Vec<(String, &ResourceInfo)> = Vec::new();
    for g in &REGISTRY.groups {
        let base = if g.group.is_empty() {
            format!("/api/{}", g.version)
        } else {
            format!("/apis/{}/{}", g.group, g.version)
        };
        for r in &g.resources {
            let mut schema = Value::from((r.schema)(&mut generator));
            v3_refs_to_v2(&mut schema);
            if let Some(name) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|s| s.rsplit('/').next())
            {
                gvks.push((name.to_string(), r));
            }
            let collection = if r.namespaced {
                format!("{base}/namespaces/{{namespace}}/{}", r.plural)
            } else {
                format!("{base}/{}", r.plural)
            };
            paths.insert(
                collection.clone(),
                json!({
                    "get": v2_operation(r, "list", "list", &json!({})),
                    "post": v2_operation(r, "create", "post", &schema),
                }),
            );
            paths.insert(
                format!("{collection}/{{name}}"),
                json!({
                    "get": v2_operation(r, "read", "get", &schema),
                    "put": v2_operation(r, "replace", "put", &schema),
                    "patch": v2_operation(r, "patch", "patch", &schema),
                    "delete": v2_operation(r, "delete", "delete", &json!({})),
                }),
            );
            if r.status_subresource {
                paths.insert(
                    format!("{collection}/{{name}}/status"),
                    json!({
                        "get": v2_operation(r, "readStatus", "get", &schema),
                        "put": v2_operation(r, "replaceStatus", "put", &schema),
                        "patch": v2_operation(r, "patchStatus", "patch", &schema),
                    }),
                );
            }
            if r.scale_subresource {
                let mut scale = Value::from(
                    generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>(),
                );
                v3_refs_to_v2(&mut scale);
                let mut ops = json!({
                    "get": v2_operation(r, "readScale", "get", &scale),
                    "put": v2_operation(r, "replaceScale", "put", &scale),
                    "patch": v2_operation(r, "patchScale", "patch", &scale),
                });
                for (_, op) in ops.as_object_mut().into_iter().flatten() {
                    op["x-kubernetes-group-version-kind"] =
                        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
                }
                paths.insert(format!("{collection}/{{name}}/scale"), ops);
            }
        }
    }
    generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
    let mut definitions = generator.take_definitions(true);
    add_patch_extensions(&mut definitions);
    for (name, r) in gvks {
        if let Some(s) = definitions.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{ "group": r.group, "version": r.version, "kind": r.kind }]),
            );
        }
    }
    let mut definitions = Value::Object(definitions);
    v3_refs_to_v2(&mut definitions);
    json!({
        "swagger": "2.0",
        "info": { "title": "Kubernetes", "version": crate::health::GIT_VERSION },
        "paths": paths,
        "definitions": definitions,
    })
}

/// Adds upstream's patch and list extensions to the properties of every definition
/// (`x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`, `x-kubernetes-list-type`,
/// `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`), from [`crate::patch_meta`]. kubectl
/// reads them to compute `apply` patches.
pub(crate) fn add_patch_extensions(schemas: &mut Map<String, Value>) {
    for (name, schema) in schemas.iter_mut() {
        let Some(def) = crate::patch_meta::SCHEMAS.definition(name) else {
            continue;
        };
        if let (Some(element), Some(obj)) = (def.element_type, schema.as_object_mut()) {
            obj.insert("x-kubernetes-map-type".into(), element.as_str().into());
        }
        let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (field, prop) in props.iter_mut() {
            let (Some(meta), Some(prop)) = (def.fields.get(field), prop.as_object_mut()) else {
                continue;
            };
            if let Some(tag) = meta.strategy.as_tag() {
                prop.insert("x-kubernetes-patch-strategy".into(), tag.into());
            }
            if let Some(key) = meta.merge_key {
                prop.insert("x-kubernetes-patch-merge-key".into(), key.into());
            }
            if let Some(list) = meta.list_type {
                prop.insert("x-kubernetes-list-type".into(), list.as_str().into());
                if !meta.list_map_keys.is_empty() {
                    prop.insert(
                        "x-kubernetes-list-map-keys".into(),
                        meta.list_map_keys.to_vec().into(),
                    );
                }
            }
            if let Some(element) = meta.element_type {
                // Upstream uses this one name for `+mapType` and `+structType`.
                prop.insert("x-kubernetes-map-type".into(), element.as_str().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_carry_gvk_and_field_validation() {
        let core = REGISTRY.group_version("", "v1").expect("core");
        let doc = document(core);
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        let names: Vec<&str> = op["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(names.contains(&"fieldValidation"));
        assert_eq!(hash_of(&doc), hash_of(&document(core)));
        let cm = &doc["components"]["schemas"]["io.k8s.api.core.v1.ConfigMap"];
        assert_eq!(
            cm["x-kubernetes-group-version-kind"][0]["kind"],
            "ConfigMap"
        );
        assert!(cm["properties"]["data"]["description"].is_string());
        let meta = &doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
        assert_eq!(
            meta["properties"]["finalizers"]["x-kubernetes-patch-strategy"],
            "merge"
        );
        assert_eq!(
            meta["properties"]["finalizers"]["x-kubernetes-list-type"],
            "set"
        );
        let ports =
            &doc["components"]["schemas"]["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(ports["x-kubernetes-list-type"], "map");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        let volumes =
            &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"];
        assert_eq!(volumes["x-kubernetes-patch-strategy"], "merge,retainKeys");
        assert_eq!(
            doc["components"]["schemas"]["io.k8s.api.core.v1.LocalObjectReference"]["x-kubernetes-map-type"],
            "atomic"
        );
        assert!(
            doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
                .is_object()
        );
    }

    #[test]
    fn v2_has_definitions_refs_gvks_and_patch_extensions() {
        let doc = document_v2();
        assert_eq!(doc["swagger"], "2.0");
        let defs = &doc["definitions"];
        let deploy = &defs["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deploy["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        let text = doc.to_string();
        assert!(!text.contains("#/components/schemas/"));
        assert!(text.contains("#/definitions/io.k8s.api.core.v1.PodSpec"));
        let containers = &defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            op["consumes"]
                .as_array()
                .is_some_and(|c| c.contains(&json!("application/strategic-merge-patch+json")))
        );
    }
}
