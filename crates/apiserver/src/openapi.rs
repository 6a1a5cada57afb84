//! OpenAPI v3: `/openapi/v3` (the index of group-version documents) and one document per group
//! version with each resource's paths and operations (`x-kubernetes-group-version-kind`, query
//! parameters) and the component schemas of its types, generated from k8s-openapi's
//! `JsonSchema` impls, with `x-kubernetes-group-version-kind` on each resource's schema.
//!
//! kubectl reads it to learn that the server validates fields itself (`fieldValidation`) and
//! for `kubectl explain`. Not yet carried: the patch strategy extensions
//! (`x-kubernetes-patch-merge-key`, ...) and OpenAPI v2.

use std::sync::LazyLock;

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
                "patch": operation(r, "patch", "patch", &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"], &schema),
                "delete": operation(r, "delete", "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"], &json!({})),
            }),
        );
    }
    let mut schemas = generator.take_definitions(true);
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
        assert!(
            doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
                .is_object()
        );
    }
}
