//! `metadata.managedFields`: decoding, encoding and ordering its entries.

use serde_json::{Map, Value, json};

use super::fieldset::FieldSet;

/// `Apply` or `Update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `ManagedFieldsEntry`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) manager: String,
    pub(crate) operation: Operation,
    pub(crate) api_version: String,
    pub(crate) time: Option<String>,
    /// Empty for the main resource.
    pub(crate) subresource: String,
    pub(crate) fields: FieldSet,
}

impl Entry {
    /// Whether `self` is the entry of this manager, operation, version and subresource.
    pub(crate) fn is(
        &self,
        manager: &str,
        operation: Operation,
        api_version: &str,
        subresource: &str,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == Operation::Apply || self.api_version == api_version)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation.as_str()));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let operation = match v.get("operation").and_then(Value::as_str)? {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            _ => return None,
        };
        let manager = s("manager");
        let fields = match v.get("fieldsV1") {
            Some(f) => FieldSet::from_fields_v1(f)?,
            None => FieldSet::default(),
        };
        Some(Entry {
            manager,
            operation,
            api_version: s("apiVersion"),
            time: v.get("time").and_then(Value::as_str).map(String::from),
            subresource: s("subresource"),
            fields,
        })
    }
}

/// What an object's `metadata.managedFields` says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Managed {
    /// The entries (possibly none).
    Entries(Vec<Entry>),
    /// A client asked to clear the managed fields (`[{}]`): the object is stored without them.
    Reset,
}

/// The raw `metadata.managedFields` of `obj`.
pub(crate) fn raw(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields")
}

/// Decodes the managed fields of `obj`. Entries that cannot be decoded are dropped, as upstream
/// drops what it cannot parse; a list holding only empty entries is a reset.
pub(crate) fn decode(obj: &Value) -> Managed {
    let Some(Value::Array(list)) = raw(obj) else {
        return Managed::Entries(Vec::new());
    };
    if !list.is_empty()
        && list
            .iter()
            .all(|e| e.as_object().is_some_and(Map::is_empty))
    {
        return Managed::Reset;
    }
    Managed::Entries(list.iter().filter_map(Entry::from_json).collect())
}

/// Writes `entries` into `obj`, in upstream's order (Apply before Update, then by time,
/// manager, apiVersion, subresource), dropping empty ones; no entries removes the field.
pub(crate) fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| a.time.cmp(&b.time))
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_sort() {
        let obj = json!({"metadata": {"managedFields": [
            {"manager": "b", "operation": "Update", "apiVersion": "v1",
             "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:data": {"f:x": {}}}},
            {"manager": "a", "operation": "Apply", "apiVersion": "v1",
             "time": "2026-01-02T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:data": {"f:y": {}}}, "subresource": "status"},
        ]}});
        let Managed::Entries(entries) = decode(&obj) else {
            panic!("entries")
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].subresource, "status");
        let mut out = json!({"metadata": {}});
        encode(&mut out, entries);
        assert_eq!(out["metadata"]["managedFields"][0]["manager"], "a");
        assert_eq!(out["metadata"]["managedFields"][0]["subresource"], "status");
        assert_eq!(
            out["metadata"]["managedFields"][1],
            obj["metadata"]["managedFields"][0]
        );
        assert_eq!(
            decode(&json!({"metadata": {"managedFields": [{}]}})),
            Managed::Reset
        );
    }
}
