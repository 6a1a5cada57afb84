//! Patch metadata of the served types: for a resource's root type, the patch strategy, patch
//! merge key, list type and list-map keys of every field, reachable by walking field paths.
//!
//! Two sources are joined once, at first use:
//! - the type graph (which definition a field holds, lists, maps) from k8s-openapi's schemars
//!   schemas (`ResourceInfo.schema`);
//! - upstream's struct-tag and marker facts (`patchStrategy`, `patchMergeKey`, `+listType`,
//!   `+listMapKey`, `+mapType`, `+structType`), which k8s-openapi does not carry, from our own
//!   table in [`facts`].
//!
//! Strategic merge patch uses the patch strategy and merge key (as upstream's apiserver, which
//! reads the struct tags); server-side apply uses the list type and list-map keys. A resource
//! without metadata (custom resources, later) gets `None` from [`for_resource`]: upstream
//! answers 415 to a strategic merge patch of those.

mod facts;

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use crate::registry::{REGISTRY, ResourceInfo};

/// A field's `patchStrategy` tag; upstream combines them with commas ("merge,retainKeys").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Strategy {
    /// `merge`: lists merge by the merge key (objects) or as sets (scalars).
    pub(crate) merge: bool,
    /// `retainKeys`: the `$retainKeys` directive is honoured (union types such as volumes).
    pub(crate) retain_keys: bool,
    /// `replace`: the field is replaced as a whole, even when it is a map.
    pub(crate) replace: bool,
}

impl Strategy {
    fn parse(s: &str) -> Self {
        let mut out = Strategy::default();
        for part in s.split(',').map(str::trim) {
            match part {
                "merge" => out.merge = true,
                "retainKeys" => out.retain_keys = true,
                "replace" => out.replace = true,
                _ => {}
            }
        }
        out
    }

    /// The tag as upstream spells it (`x-kubernetes-patch-strategy`), if any.
    pub(crate) fn as_tag(self) -> Option<&'static str> {
        match (self.merge, self.retain_keys, self.replace) {
            (true, true, _) => Some("merge,retainKeys"),
            (true, false, _) => Some("merge"),
            (false, true, _) => Some("retainKeys"),
            (false, false, true) => Some("replace"),
            (false, false, false) => None,
        }
    }
}

/// A list's `+listType` (server-side apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    Atomic,
    Set,
    /// Items are keyed by [`Field::list_map_keys`].
    Map,
}

impl ListType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ListType::Atomic => "atomic",
            ListType::Set => "set",
            ListType::Map => "map",
        }
    }
}

/// `+mapType` / `+structType` of a map or struct field (server-side apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElementType {
    Atomic,
    Granular,
}

impl ElementType {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "atomic" => Some(ElementType::Atomic),
            "granular" => Some(ElementType::Granular),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ElementType::Atomic => "atomic",
            ElementType::Granular => "granular",
        }
    }
}

/// What a value is, from the schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// String, number, boolean, or a scalar-encoded type (Quantity, IntOrString, Time).
    Scalar,
    /// No schema (RawExtension, JSON, preserve-unknown-fields): merged without metadata.
    Any,
    /// A named definition with properties.
    Object(usize),
    /// A list of the inner shape.
    List(Box<Shape>),
    /// A string-keyed map of the inner shape.
    Map(Box<Shape>),
}

/// One field of a definition: its patch metadata and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) strategy: Strategy,
    /// `patchMergeKey`: the key that identifies an item of a merged list of objects.
    pub(crate) merge_key: Option<&'static str>,
    pub(crate) list_type: Option<ListType>,
    /// `+listMapKey`s, in order (only with [`ListType::Map`]).
    pub(crate) list_map_keys: &'static [&'static str],
    pub(crate) element_type: Option<ElementType>,
    pub(crate) shape: Shape,
}

/// A named definition: `io.k8s.api.core.v1.PodSpec`.
#[derive(Debug)]
pub(crate) struct Definition {
    pub(crate) name: String,
    pub(crate) fields: HashMap<String, Field>,
    /// The type's own `+structType`/`+mapType` marker.
    pub(crate) element_type: Option<ElementType>,
}

/// Every definition reachable from the served resources, and each resource's root.
#[derive(Debug)]
pub(crate) struct Schemas {
    defs: Vec<Definition>,
    by_name: HashMap<String, usize>,
    /// `Shape::Object(i)` for every definition `i`, so that nodes can borrow a root's shape.
    object_shapes: Vec<Shape>,
    /// (group, version, kind) → root definition.
    roots: HashMap<(&'static str, &'static str, &'static str), usize>,
}

/// Built once, from the registry.
pub(crate) static SCHEMAS: LazyLock<Schemas> = LazyLock::new(Schemas::build);

/// A position in the type graph of one root type: the shape of the value found there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    schemas: &'a Schemas,
    shape: &'a Shape,
}

/// The root type of `info`, or `None` when the resource has no patch metadata (then strategic
/// merge patch is refused with 415, as upstream does for custom resources).
pub(crate) fn for_resource(info: &ResourceInfo) -> Option<Node<'static>> {
    SCHEMAS.root(info.group, info.version, info.kind)
}

impl<'a> Node<'a> {
    /// An untyped node: everything merges as in a JSON merge patch, lists are replaced.
    pub(crate) fn any() -> Node<'static> {
        static ANY: Shape = Shape::Any;
        Node {
            schemas: &SCHEMAS,
            shape: &ANY,
        }
    }

    #[allow(dead_code, reason = "for server-side apply")]
    pub(crate) fn shape(&self) -> &'a Shape {
        self.shape
    }

    /// The definition here, if this is an object.
    pub(crate) fn definition(&self) -> Option<&'a Definition> {
        match self.shape {
            Shape::Object(i) => self.schemas.defs.get(*i),
            _ => None,
        }
    }

    /// A field of the object here, with its metadata and the node of its value.
    pub(crate) fn field(&self, name: &str) -> Option<(&'a Field, Node<'a>)> {
        let f = self.definition()?.fields.get(name)?;
        Some((
            f,
            Node {
                schemas: self.schemas,
                shape: &f.shape,
            },
        ))
    }

    /// The items of the list here, or the values of the map here.
    pub(crate) fn elements(&self) -> Option<Node<'a>> {
        match self.shape {
            Shape::List(inner) | Shape::Map(inner) => Some(Node {
                schemas: self.schemas,
                shape: inner,
            }),
            _ => None,
        }
    }

    /// Walks a path of field names from here, stepping through list items and map values
    /// implicitly (`["spec", "template", "spec", "containers", "ports"]`); returns the last
    /// field's metadata.
    #[allow(dead_code, reason = "for server-side apply")]
    pub(crate) fn lookup(&self, path: &[&str]) -> Option<&'a Field> {
        let mut node = *self;
        let mut last = None;
        for name in path {
            while let Some(inner) = node.elements() {
                node = inner;
            }
            let (f, next) = node.field(name)?;
            last = Some(f);
            node = next;
        }
        last
    }
}

impl Schemas {
    /// The root node of a served kind.
    pub(crate) fn root(&self, group: &str, version: &str, kind: &str) -> Option<Node<'_>> {
        let i = *self
            .roots
            .iter()
            .find_map(|((g, v, k), i)| (*g == group && *v == version && *k == kind).then_some(i))?;
        Some(Node {
            schemas: self,
            shape: self.object_shapes.get(i)?,
        })
    }

    /// A definition by name.
    pub(crate) fn definition(&self, name: &str) -> Option<&Definition> {
        self.defs.get(*self.by_name.get(name)?)
    }

    fn build() -> Self {
        let mut generator =
            k8s_openapi::schemars::generate::SchemaSettings::openapi3().into_generator();
        let mut root_refs = Vec::new();
        for r in REGISTRY.groups.iter().flat_map(|g| g.resources.iter()) {
            let schema = Value::from((r.schema)(&mut generator));
            if let Some(name) = ref_name(&schema) {
                root_refs.push(((r.group, r.version, r.kind), name.to_string()));
            }
        }
        let raw = generator.take_definitions(true);
        let names: Vec<String> = raw.keys().cloned().collect();
        let by_name: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let facts: HashMap<(&str, &str), &facts::Row> = facts::ROWS
            .iter()
            .map(|row| ((row.0, row.1), row))
            .collect();
        let mut defs = Vec::with_capacity(names.len());
        for name in &names {
            let mut fields = HashMap::new();
            if let Some(props) = raw
                .get(name)
                .and_then(|d| d.get("properties"))
                .and_then(Value::as_object)
            {
                for (field, schema) in props {
                    let shape = shape_of(schema, &raw, &by_name, 0);
                    let mut f = Field {
                        strategy: Strategy::default(),
                        merge_key: None,
                        list_type: None,
                        list_map_keys: &[],
                        element_type: None,
                        shape,
                    };
                    if let Some((_, _, strategy, key, list, keys, element)) =
                        facts.get(&(name.as_str(), field.as_str()))
                    {
                        f.strategy = Strategy::parse(strategy);
                        f.merge_key = (!key.is_empty()).then_some(*key);
                        f.list_type = match *list {
                            "atomic" => Some(ListType::Atomic),
                            "set" => Some(ListType::Set),
                            "map" => Some(ListType::Map),
                            _ => None,
                        };
                        f.list_map_keys = keys;
                        f.element_type = ElementType::parse(element);
                    }
                    fields.insert(field.clone(), f);
                }
            }
            let element_type = facts::TYPES
                .iter()
                .find(|(def, _)| def == name)
                .and_then(|(_, t)| ElementType::parse(t));
            defs.push(Definition {
                name: name.clone(),
                fields,
                element_type,
            });
        }
        let roots = root_refs
            .into_iter()
            .filter_map(|(gvk, name)| Some((gvk, *by_name.get(&name)?)))
            .collect();
        let object_shapes = (0..defs.len()).map(Shape::Object).collect();
        Schemas {
            defs,
            by_name,
            roots,
            object_shapes,
        }
    }
}

/// The definition name a `$ref` (or a one-element `allOf` of one) points at.
fn ref_name(schema: &Value) -> Option<&str> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next();
    }
    match schema
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([one]) => ref_name(one),
        _ => None,
    }
}

/// The shape of a schema; named definitions with properties become [`Shape::Object`], others
/// (Quantity, Time, IntOrString: strings) are resolved to their own shape.
fn shape_of(
    schema: &Value,
    raw: &serde_json::Map<String, Value>,
    by_name: &HashMap<String, usize>,
    depth: usize,
) -> Shape {
    if depth > 8 {
        return Shape::Any;
    }
    if let Some(name) = ref_name(schema) {
        let Some(def) = raw.get(name) else {
            return Shape::Any;
        };
        if def.get("properties").is_some() {
            return by_name.get(name).map_or(Shape::Any, |i| Shape::Object(*i));
        }
        return shape_of(def, raw, by_name, depth + 1);
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return Shape::Scalar;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => Shape::List(Box::new(
            schema
                .get("items")
                .map_or(Shape::Any, |i| shape_of(i, raw, by_name, depth + 1)),
        )),
        Some("object") => match schema.get("additionalProperties") {
            Some(ap) if ap.is_object() => {
                Shape::Map(Box::new(shape_of(ap, raw, by_name, depth + 1)))
            }
            _ => Shape::Any,
        },
        Some(_) => Shape::Scalar,
        None => Shape::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(group: &str, kind: &str) -> Node<'static> {
        let version = if group.is_empty() || group != "autoscaling" {
            "v1"
        } else {
            "v2"
        };
        SCHEMAS.root(group, version, kind).expect("served kind")
    }

    #[test]
    fn pod_template_containers_merge_on_name() {
        let deploy = root("apps", "Deployment");
        let c = deploy
            .lookup(&["spec", "template", "spec", "containers"])
            .expect("containers");
        assert!(c.strategy.merge);
        assert_eq!(c.merge_key, Some("name"));
        assert_eq!(c.list_type, Some(ListType::Map));
        assert_eq!(c.list_map_keys, &["name"]);
        let ports = deploy
            .lookup(&["spec", "template", "spec", "containers", "ports"])
            .expect("ports");
        assert_eq!(ports.merge_key, Some("containerPort"));
        assert_eq!(ports.list_map_keys, &["containerPort", "protocol"]);
        let env = deploy
            .lookup(&["spec", "template", "spec", "initContainers", "env"])
            .expect("env");
        assert_eq!(env.merge_key, Some("name"));
        let args = deploy
            .lookup(&["spec", "template", "spec", "containers", "args"])
            .expect("args");
        assert_eq!(args.strategy, Strategy::default());
        assert_eq!(args.list_type, Some(ListType::Atomic));
        let volumes = deploy
            .lookup(&["spec", "template", "spec", "volumes"])
            .expect("volumes");
        assert_eq!(volumes.strategy.as_tag(), Some("merge,retainKeys"));
        let strategy = deploy.lookup(&["spec", "strategy"]).expect("strategy");
        assert_eq!(strategy.strategy.as_tag(), Some("retainKeys"));
        assert!(matches!(strategy.shape, Shape::Object(_)));
    }

    #[test]
    fn metadata_lists_and_shapes() {
        let cm = root("", "ConfigMap");
        let fin = cm.lookup(&["metadata", "finalizers"]).expect("finalizers");
        assert!(fin.strategy.merge);
        assert_eq!(fin.merge_key, None);
        assert_eq!(fin.list_type, Some(ListType::Set));
        assert_eq!(fin.shape, Shape::List(Box::new(Shape::Scalar)));
        let owners = cm
            .lookup(&["metadata", "ownerReferences"])
            .expect("ownerReferences");
        assert_eq!(owners.merge_key, Some("uid"));
        let data = cm.lookup(&["data"]).expect("data");
        assert_eq!(data.shape, Shape::Map(Box::new(Shape::Scalar)));
        let labels = cm.lookup(&["metadata", "labels"]).expect("labels");
        assert_eq!(labels.shape, Shape::Map(Box::new(Shape::Scalar)));
        assert!(cm.lookup(&["metadata", "nope"]).is_none());

        let svc = root("", "Service");
        let ports = svc.lookup(&["spec", "ports"]).expect("ports");
        assert_eq!(ports.merge_key, Some("port"));
        assert_eq!(ports.list_map_keys, &["port", "protocol"]);
        let target = svc
            .lookup(&["spec", "ports", "targetPort"])
            .expect("targetPort");
        assert_eq!(target.shape, Shape::Scalar, "IntOrString is a scalar");
        let pod = root("", "Pod");
        let limits = pod
            .lookup(&["spec", "containers", "resources", "limits"])
            .expect("limits");
        assert_eq!(limits.shape, Shape::Map(Box::new(Shape::Scalar)));
        let conds = pod.lookup(&["status", "conditions"]).expect("conditions");
        assert_eq!(conds.merge_key, Some("type"));
        let node = root("", "Node");
        let taints = node.lookup(&["spec", "taints"]).expect("taints");
        assert_eq!(taints.list_type, Some(ListType::Atomic));
        assert!(!taints.strategy.merge);
    }

    #[test]
    fn every_served_resource_has_a_root_and_every_fact_a_definition() {
        for r in REGISTRY.groups.iter().flat_map(|g| g.resources.iter()) {
            assert!(
                for_resource(r).is_some(),
                "{} {} has no patch metadata",
                r.group,
                r.kind
            );
        }
        let wh = root(
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration",
        );
        let webhooks = wh.lookup(&["webhooks"]).expect("webhooks");
        assert_eq!(webhooks.merge_key, Some("name"));
        // Facts name definitions and fields the schemas know (catches typos and drift),
        // for the definitions reachable from served resources.
        let mut known = 0;
        for (def, field, ..) in facts::ROWS {
            if let Some(d) = SCHEMAS.definition(def) {
                assert!(d.fields.contains_key(*field), "{def}.{field}");
                known += 1;
            }
        }
        assert!(known > 150, "{known}");
    }
}
