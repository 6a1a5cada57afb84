//! Sets of field paths, and their `FieldsV1` encoding.
//!
//! A path is a sequence of [`Elem`]s from the object's root: a field of a map or struct
//! (`f:name`), an item of an associative list named by its key fields (`k:{"name":"c"}`), an
//! item of a set (`v:"x"`), or an item of a list by index (`i:0`). A [`FieldSet`] is a tree of
//! such elements; a node that is itself in the set is a *member* (`.` in the encoding).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Elem {
    /// A field of a map or a struct.
    Field(String),
    /// An item of an associative list: its key fields, as canonical (sorted, compact) JSON.
    Key(String),
    /// An item of a set: its value as canonical JSON.
    Value(String),
    /// An item of a list by position.
    Index(usize),
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Elem::Field(f) => format!("f:{f}"),
            Elem::Key(k) => format!("k:{k}"),
            Elem::Value(v) => format!("v:{v}"),
            Elem::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Elem> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "f" => Some(Elem::Field(rest.to_string())),
            "k" => serde_json::from_str::<Value>(rest)
                .ok()
                .filter(Value::is_object)
                .map(|v| Elem::Key(canonical(&v))),
            "v" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| Elem::Value(canonical(&v))),
            "i" => rest.parse().ok().map(Elem::Index),
            _ => None,
        }
    }

    /// How upstream prints this step in a conflict: `.spec`, `[name="c"]`, `[="x"]`, `[0]`.
    fn display(&self, out: &mut String) {
        match self {
            Elem::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Elem::Key(k) => {
                out.push('[');
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(k) {
                    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    out.push_str(&parts.join(","));
                }
                out.push(']');
            }
            Elem::Value(v) => {
                let _ = write!(out, "[={v}]");
            }
            Elem::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="c"].image`.
pub(crate) fn path_string(path: &[Elem]) -> String {
    let mut out = String::new();
    for e in path {
        e.display(&mut out);
    }
    out
}

/// JSON with object keys sorted and no whitespace: the form of `k:` and `v:` elements.
pub(crate) fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                let mut out = Map::new();
                for (k, v) in b {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // Keys of a `Map` serialize in insertion order with serde_json's `preserve_order`, in
    // sorted order without it: inserting in sorted order gives sorted output either way.
    serde_json::to_string(&sorted(v)).unwrap_or_default()
}

/// A set of field paths, as a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSet {
    /// Whether the path leading here is itself in the set.
    pub(crate) member: bool,
    pub(crate) children: BTreeMap<Elem, FieldSet>,
}

impl FieldSet {
    pub(crate) fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// The node at `e` below this one, created if absent.
    pub(crate) fn child_mut(&mut self, e: Elem) -> &mut FieldSet {
        self.children.entry(e).or_default()
    }

    #[cfg(test)]
    pub(crate) fn get(&self, path: &[Elem]) -> Option<&FieldSet> {
        match path.split_first() {
            None => Some(self),
            Some((e, rest)) => self.children.get(e)?.get(rest),
        }
    }

    /// Adds `path` as a member.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, path: &[Elem]) {
        match path.split_first() {
            None => self.member = true,
            Some((e, rest)) => self.child_mut(e.clone()).insert(rest),
        }
    }

    /// Whether `path` is a member.
    #[cfg(test)]
    pub(crate) fn has(&self, path: &[Elem]) -> bool {
        self.get(path).is_some_and(|n| n.member)
    }

    /// Drops empty nodes.
    pub(crate) fn prune(&mut self) {
        for c in self.children.values_mut() {
            c.prune();
        }
        self.children.retain(|_, c| !c.is_empty());
    }

    pub(crate) fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (e, c) in &other.children {
            self.child_mut(e.clone()).union(c);
        }
    }

    /// The members of `self` that are not members of `other`.
    pub(crate) fn difference(&self, other: &FieldSet) -> FieldSet {
        let empty = FieldSet::default();
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            let d = c.difference(other.children.get(e).unwrap_or(&empty));
            if !d.is_empty() {
                out.children.insert(e.clone(), d);
            }
        }
        out
    }

    /// The members in both sets.
    pub(crate) fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            if let Some(o) = other.children.get(e) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(e.clone(), i);
                }
            }
        }
        out
    }

    /// Removes `path` and everything below it.
    pub(crate) fn remove_subtree(&mut self, path: &[Elem]) {
        match path.split_first() {
            None => *self = FieldSet::default(),
            Some((e, [])) => {
                self.children.remove(e);
            }
            Some((e, rest)) => {
                if let Some(c) = self.children.get_mut(e) {
                    c.remove_subtree(rest);
                }
            }
        }
    }

    /// Removes every member of `removed` together with what lies below it.
    pub(crate) fn remove_subtrees_of(&mut self, removed: &FieldSet) {
        for p in removed.members() {
            self.remove_subtree(&p);
        }
        self.prune();
    }

    /// Every member path, depth first, in element order.
    pub(crate) fn members(&self) -> Vec<Vec<Elem>> {
        fn walk(n: &FieldSet, prefix: &mut Vec<Elem>, out: &mut Vec<Vec<Elem>>) {
            if n.member {
                out.push(prefix.clone());
            }
            for (e, c) in &n.children {
                prefix.push(e.clone());
                walk(c, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// The `FieldsV1` encoding: `{"f:spec": {"f:replicas": {}}, ...}`, `"."` for a member that
    /// has children.
    pub(crate) fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (e, c) in &self.children {
            if !c.is_empty() {
                m.insert(e.encode(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    /// Parses a `FieldsV1` value of the root; `None` if it is not one.
    pub(crate) fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        let mut root = Self::parse_node(v)?;
        // The root itself is never a member.
        root.member = false;
        Some(root)
    }

    fn parse_node(v: &Value) -> Option<FieldSet> {
        let m = v.as_object()?;
        let mut out = FieldSet::default();
        if m.is_empty() {
            out.member = true;
        }
        for (k, c) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            out.children.insert(Elem::decode(k)?, Self::parse_node(c)?);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> Elem {
        Elem::Field(s.into())
    }

    #[test]
    fn fields_v1_round_trips_with_dot_keys_and_values() {
        let v = json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:containers": {
                    "k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}},
                },
                "f:replicas": {},
            },
            "f:metadata2": {"f:finalizers": {"v:\"a/b\"": {}}},
        });
        let set = FieldSet::from_fields_v1(&v).expect("parses");
        assert!(set.has(&[f("spec"), f("replicas")]));
        let item = Elem::Key(r#"{"name":"c"}"#.into());
        assert!(set.has(&[f("spec"), f("containers"), item.clone()]));
        assert!(set.has(&[f("spec"), f("containers"), item, f("image")]));
        assert!(!set.has(&[f("spec")]));
        assert_eq!(set.to_fields_v1(), v);
        assert!(FieldSet::from_fields_v1(&json!({"x:y": {}})).is_none());
    }

    #[test]
    fn set_algebra() {
        let mut a = FieldSet::default();
        a.insert(&[f("spec"), f("replicas")]);
        a.insert(&[f("spec"), f("paused")]);
        let mut b = FieldSet::default();
        b.insert(&[f("spec"), f("replicas")]);
        b.insert(&[f("metadata"), f("labels"), f("x")]);
        assert_eq!(
            a.intersection(&b).members(),
            vec![vec![f("spec"), f("replicas")]]
        );
        assert_eq!(
            a.difference(&b).members(),
            vec![vec![f("spec"), f("paused")]]
        );
        let mut u = a.clone();
        u.union(&b);
        assert_eq!(u.members().len(), 3);
        let mut removed = FieldSet::default();
        removed.insert(&[f("spec")]);
        u.remove_subtrees_of(&removed);
        assert_eq!(u.members(), vec![vec![f("metadata"), f("labels"), f("x")]]);
    }

    #[test]
    fn paths_print_as_upstream() {
        let p = [
            f("spec"),
            f("containers"),
            Elem::Key(canonical(&json!({"name": "c"}))),
            f("ports"),
            Elem::Key(canonical(&json!({"protocol": "TCP", "containerPort": 80}))),
        ];
        assert_eq!(
            path_string(&p),
            r#".spec.containers[name="c"].ports[containerPort=80,protocol="TCP"]"#
        );
        assert_eq!(
            path_string(&[f("m"), Elem::Value("\"x\"".into())]),
            r#".m[="x"]"#
        );
    }
}
