//! The shape facts server-side apply needs about a type: how each list merges
//! (`x-kubernetes-list-type` atomic/set/map and its `x-kubernetes-list-map-keys`) and which
//! objects are atomic (`x-kubernetes-map-type: atomic`: `+mapType`/`+structType` on the field
//! or on the type).
//!
//! Built-in types answer from [`crate::patch_meta`] (upstream's markers joined to k8s-openapi's
//! type graph). Paths are field names from the root; list items and map values do not count,
//! so `spec.template.spec.containers.ports` names the ports of every container. Custom
//! resources will answer from their structural schema by implementing [`Schema`].

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
}
