//! The shape facts server-side apply needs about a type: how each list merges
//! (`x-kubernetes-list-type` atomic/set/map and its `x-kubernetes-list-map-keys`) and which
//! objects are atomic (`x-kubernetes-map-type: atomic`: `+mapType`/`+structType` on the field
//! or on the type).
//!
//! Built-in types answer from [`crate::patch_meta`] (upstream's markers joined to k8s-openapi's
//! type graph). Paths are field names from the root; list items and map values do not count,
//! so `spec.template.spec.containers.ports` names the ports of every container. Custom
//! resources answer from their version's structural schema ([`StructuralSchema`]): the
//! `x-kubernetes-list-type`/`-list-map-keys`/`-map-type` extensions (a list without a list
//! type is atomic, as upstream treats CRD schemas), with `metadata` answered as every
//! object's `ObjectMeta`.

use serde_json::Value;

use crate::patch_meta::{self, ElementType, Field, Node, Shape};
use crate::registry::ResourceInfo;

/// How a list merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced as a whole; owned as one field.
    Atomic,
    /// Scalars merged by value (`v:`).
    Set,
    /// Objects merged by these key fields (`k:`).
    Map(&'static [&'static str]),
}

/// What apply asks about a type.
pub(crate) trait Schema {
    /// The list type of the list at `path` (field names from the root).
    fn list_type(&self, path: &[String]) -> ListType;
    /// Whether the object at `path` is atomic (replaced and owned as a whole).
    fn atomic_object(&self, path: &[String]) -> bool;
    /// Whether the object at `path` is a map with arbitrary keys (labels, data, limits), not a
    /// struct: a newly set one is itself owned by an `Update` (`.`), as upstream records it.
    fn is_map(&self, _path: &[String]) -> bool {
        false
    }
    /// The default of a list-map key field absent from an item, as upstream's schema has it
    /// (`protocol: TCP` of ports).
    fn key_default(&self, _path: &[String], key: &str) -> Option<Value> {
        (key == "protocol").then(|| Value::String("TCP".into()))
    }
}

/// A built-in resource's type, from `patch_meta`. Without metadata (custom resources until
/// their schemas are wired in) every list is atomic and every object granular, which is
/// upstream's behaviour for a schema without markers.
pub(crate) struct TypedSchema {
    root: Option<Node<'static>>,
}

impl TypedSchema {
    pub(crate) fn of(info: &ResourceInfo) -> Self {
        TypedSchema {
            root: patch_meta::for_resource(info),
        }
    }

    /// The last field of `path` and the node of its value.
    fn resolve(&self, path: &[String]) -> Option<(&'static Field, Node<'static>)> {
        let mut node = self.root?;
        let mut last = None;
        for name in path {
            while let Some(inner) = node.elements() {
                node = inner;
            }
            let (f, next) = node.field(name)?;
            last = Some(f);
            node = next;
        }
        Some((last?, node))
    }
}

impl Schema for TypedSchema {
    fn list_type(&self, path: &[String]) -> ListType {
        let Some((f, _)) = self.resolve(path) else {
            return ListType::Atomic;
        };
        match f.list_type {
            Some(patch_meta::ListType::Map) if !f.list_map_keys.is_empty() => {
                ListType::Map(f.list_map_keys)
            }
            Some(patch_meta::ListType::Set) => ListType::Set,
            Some(_) => ListType::Atomic,
            // No list type: upstream's OpenAPI conversion falls back on the patch strategy.
            None if f.strategy.merge => match f.merge_key.as_ref() {
                Some(key) => ListType::Map(std::slice::from_ref(key)),
                None => ListType::Set,
            },
            None => ListType::Atomic,
        }
    }

    fn atomic_object(&self, path: &[String]) -> bool {
        let Some((f, node)) = self.resolve(path) else {
            return false;
        };
        if f.element_type == Some(ElementType::Atomic) {
            return true;
        }
        // An object in a list is the list's item.
        let node = match node.shape() {
            Shape::List(_) => node.elements(),
            _ => Some(node),
        };
        node.and_then(|n| n.definition())
            .is_some_and(|d| d.element_type == Some(ElementType::Atomic))
    }

    fn is_map(&self, path: &[String]) -> bool {
        self.resolve(path).is_some_and(|(f, node)| {
            matches!(node.shape(), Shape::Map(_)) && f.element_type != Some(ElementType::Atomic)
        })
    }
}

/// A custom resource's version, from its structural schema (`openAPIV3Schema`).
pub(crate) struct StructuralSchema<'a> {
    root: &'a Value,
    /// `metadata` is `ObjectMeta` whatever the schema says of it (upstream merges it in).
    meta: TypedSchema,
}

impl<'a> StructuralSchema<'a> {
    pub(crate) fn new(root: &'a Value) -> Self {
        let meta = crate::registry::REGISTRY
            .find("", "v1", "configmaps")
            .map(TypedSchema::of)
            .unwrap_or(TypedSchema { root: None });
        StructuralSchema { root, meta }
    }

    /// The schema node of the value at `path` (through list items and map values).
    fn resolve(&self, path: &[String]) -> Option<&'a Value> {
        let mut node = self.root;
        for name in path {
            node = Self::item(node);
            node = node
                .get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        }
        Some(node)
    }

    /// A list's item schema (the node itself for anything else).
    fn item(node: &'a Value) -> &'a Value {
        match node.get("type").and_then(Value::as_str) {
            Some("array") => node.get("items").unwrap_or(node),
            _ => node,
        }
    }

    fn is_meta(path: &[String]) -> bool {
        path.first().is_some_and(|f| f == "metadata")
    }
}

impl Schema for StructuralSchema<'_> {
    fn list_type(&self, path: &[String]) -> ListType {
        if Self::is_meta(path) {
            return self.meta.list_type(path);
        }
        let Some(node) = self.resolve(path) else {
            return ListType::Atomic;
        };
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => {
                let keys: Vec<String> = node
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect();
                if keys.is_empty() {
                    ListType::Atomic
                } else {
                    ListType::Map(crate::crd::intern_list(&keys))
                }
            }
            _ => ListType::Atomic,
        }
    }

    fn atomic_object(&self, path: &[String]) -> bool {
        if Self::is_meta(path) {
            return self.meta.atomic_object(path);
        }
        self.resolve(path).is_some_and(|n| {
            Self::item(n)
                .get("x-kubernetes-map-type")
                .and_then(Value::as_str)
                == Some("atomic")
        })
    }

    fn is_map(&self, path: &[String]) -> bool {
        if Self::is_meta(path) {
            return self.meta.is_map(path);
        }
        self.resolve(path).is_some_and(|n| {
            let n = Self::item(n);
            n.get("additionalProperties").is_some_and(Value::is_object)
                && n.get("properties").is_none()
                && n.get("x-kubernetes-map-type").and_then(Value::as_str) != Some("atomic")
        })
    }

    fn key_default(&self, path: &[String], key: &str) -> Option<Value> {
        if Self::is_meta(path) {
            return self.meta.key_default(path, key);
        }
        let node = Self::item(self.resolve(path)?);
        node.get("properties")?.get(key)?.get("default").cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    fn schema(group: &str, plural: &str) -> TypedSchema {
        TypedSchema::of(REGISTRY.find(group, "v1", plural).expect("registered"))
    }

    #[test]
    fn list_types_follow_the_field_path() {
        let deploy = schema("apps", "deployments");
        assert_eq!(
            deploy.list_type(&p("spec.template.spec.containers")),
            ListType::Map(&["name"])
        );
        assert_eq!(
            deploy.list_type(&p("spec.template.spec.containers.ports")),
            ListType::Map(&["containerPort", "protocol"])
        );
        assert_eq!(
            deploy.list_type(&p("spec.template.spec.containers.args")),
            ListType::Atomic
        );
        assert_eq!(deploy.list_type(&p("metadata.finalizers")), ListType::Set);
        assert!(deploy.atomic_object(&p("spec.selector")));
        assert!(!deploy.atomic_object(&p("spec.template.spec")));
        assert!(deploy.atomic_object(&p(
            "spec.template.spec.containers.env.valueFrom.secretKeyRef"
        )));
        let svc = schema("", "services");
        assert_eq!(
            svc.list_type(&p("spec.ports")),
            ListType::Map(&["port", "protocol"])
        );
        assert!(!deploy.atomic_object(&p("metadata.labels")));
        assert!(deploy.is_map(&p("metadata.labels")));
        assert!(deploy.is_map(&p("spec.template.spec.containers.resources.limits")));
        assert!(!deploy.is_map(&p("spec.template.spec")));
    }

    #[test]
    fn custom_resources_merge_as_their_structural_schema_says() {
        let root = serde_json::json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "ports": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["port", "protocol"],
                            "items": {
                                "type": "object",
                                "properties": {
                                    "port": {"type": "integer"},
                                    "protocol": {"type": "string", "default": "UDP"},
                                    "hosts": {
                                        "type": "array",
                                        "x-kubernetes-list-type": "set",
                                        "items": {"type": "string"}
                                    }
                                }
                            }
                        },
                        "args": {"type": "array", "items": {"type": "string"}},
                        "selector": {
                            "type": "object",
                            "x-kubernetes-map-type": "atomic",
                            "properties": {"app": {"type": "string"}}
                        },
                        "env": {
                            "type": "object",
                            "additionalProperties": {"type": "string"}
                        }
                    }
                }
            }
        });
        let s = StructuralSchema::new(&root);
        assert_eq!(
            s.list_type(&p("spec.ports")),
            ListType::Map(&["port", "protocol"])
        );
        assert_eq!(s.list_type(&p("spec.ports.hosts")), ListType::Set);
        assert_eq!(s.list_type(&p("spec.args")), ListType::Atomic);
        assert_eq!(s.list_type(&p("spec.unknown")), ListType::Atomic);
        assert!(s.atomic_object(&p("spec.selector")));
        assert!(!s.atomic_object(&p("spec")));
        assert!(s.is_map(&p("spec.env")));
        assert!(!s.is_map(&p("spec")));
        assert_eq!(
            s.key_default(&p("spec.ports"), "protocol"),
            Some(Value::String("UDP".into()))
        );
        assert_eq!(s.key_default(&p("spec.ports"), "port"), None);
        // metadata is ObjectMeta's, whatever the schema says.
        assert_eq!(s.list_type(&p("metadata.finalizers")), ListType::Set);
        assert!(s.is_map(&p("metadata.labels")));
        assert_eq!(
            s.list_type(&p("metadata.ownerReferences")),
            ListType::Map(&["uid"])
        );
    }
}
