//! `/openapi/v2` as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`),
//! the form client-go's `OpenAPISchema()` asks for — kubectl's client-side validation of `List`
//! documents (`kubectl create -f` of what `kubectl get -o yaml` prints) reads it.
//!
//! The message is gnostic's `openapi.v2.Document` (github.com/google/gnostic,
//! `openapiv2/OpenAPIv2.proto`), written here from that definition by a small protobuf writer
//! over the Swagger 2.0 JSON document this server already builds: `swagger`, `info` and every
//! definition with all Schema fields; vendor extensions, defaults, enums and examples are
//! gnostic `Any` values carrying YAML, as upstream's converter writes them. Paths are left out
//! (an empty `Paths`): the clients that read this form look up types by their
//! `x-kubernetes-group-version-kind`, never operations.

use serde_json::{Map, Value};

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u64, wire: u64) {
        self.varint((field << 3) | wire);
    }

    fn bytes(&mut self, field: u64, data: &[u8]) {
        self.key(field, LEN);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
    }

    /// A proto3 string: omitted when empty.
    fn string(&mut self, field: u64, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u64, m: Msg) {
        self.bytes(field, &m.0);
    }

    /// A proto3 bool: omitted when false (unless `always`, for oneof members).
    fn bool(&mut self, field: u64, b: bool, always: bool) {
        if b || always {
            self.key(field, VARINT);
            self.varint(u64::from(b));
        }
    }

    fn int64(&mut self, field: u64, v: i64) {
        if v != 0 {
            self.key(field, VARINT);
            // Two's complement, as protobuf writes negative int64s.
            self.varint(v as u64);
        }
    }

    fn double(&mut self, field: u64, v: f64) {
        if v != 0.0 {
            self.key(field, FIXED64);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Encodes a Swagger 2.0 JSON document as an `openapi.v2.Document`.
pub(crate) fn encode_document(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    m.string(
        1,
        doc.get("swagger").and_then(Value::as_str).unwrap_or("2.0"),
    );
    if let Some(info) = doc.get("info") {
        let mut i = Msg::default();
        i.string(1, str_of(info, "title"));
        i.string(2, str_of(info, "version"));
        i.string(3, str_of(info, "description"));
        m.message(2, i);
    }
    m.message(8, Msg::default());
    if let Some(defs) = doc.get("definitions").and_then(Value::as_object) {
        m.message(9, named_schemas(defs));
    }
    m.0
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `Definitions` and `Properties` share one shape: `repeated NamedSchema = 1`.
fn named_schemas(map: &Map<String, Value>) -> Msg {
    let mut m = Msg::default();
    for (name, schema) in map {
        let mut named = Msg::default();
        named.string(1, name);
        named.message(2, schema_msg(schema));
        m.message(1, named);
    }
    m
}

/// A gnostic `Any`: the value as YAML (field 2).
fn any_yaml(v: &Value) -> Msg {
    let mut m = Msg::default();
    let yaml = serde_yaml::to_string(v).unwrap_or_default();
    m.string(2, &yaml);
    m
}

fn schema_msg(s: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(obj) = s.as_object() else {
        return m;
    };
    let int = |k: &str| obj.get(k).and_then(Value::as_i64).unwrap_or(0);
    let float = |k: &str| obj.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let boolean = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
    let string = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    m.string(1, string("$ref"));
    m.string(2, string("format"));
    m.string(3, string("title"));
    m.string(4, string("description"));
    if let Some(d) = obj.get("default") {
        m.message(5, any_yaml(d));
    }
    m.double(6, float("multipleOf"));
    m.double(7, float("maximum"));
    m.bool(8, boolean("exclusiveMaximum"), false);
    m.double(9, float("minimum"));
    m.bool(10, boolean("exclusiveMinimum"), false);
    m.int64(11, int("maxLength"));
    m.int64(12, int("minLength"));
    m.string(13, string("pattern"));
    m.int64(14, int("maxItems"));
    m.int64(15, int("minItems"));
    m.bool(16, boolean("uniqueItems"), false);
    m.int64(17, int("maxProperties"));
    m.int64(18, int("minProperties"));
    for r in obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        m.bytes(19, r.as_bytes());
    }
    for e in obj
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(20, any_yaml(e));
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.bool(2, *b, true);
            m.message(21, a);
        }
        Some(v @ Value::Object(_)) => {
            let mut a = Msg::default();
            a.message(1, schema_msg(v));
            m.message(21, a);
        }
        _ => {}
    }
    match obj.get("type") {
        Some(Value::String(t)) => {
            let mut ty = Msg::default();
            ty.string(1, t);
            m.message(22, ty);
        }
        Some(Value::Array(ts)) => {
            let mut ty = Msg::default();
            for t in ts.iter().filter_map(Value::as_str) {
                ty.bytes(1, t.as_bytes());
            }
            m.message(22, ty);
        }
        _ => {}
    }
    match obj.get("items") {
        Some(v @ Value::Object(_)) => {
            let mut items = Msg::default();
            items.message(1, schema_msg(v));
            m.message(23, items);
        }
        Some(Value::Array(vs)) => {
            let mut items = Msg::default();
            for v in vs {
                items.message(1, schema_msg(v));
            }
            m.message(23, items);
        }
        _ => {}
    }
    for a in obj
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, schema_msg(a));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        m.message(25, named_schemas(props));
    }
    m.string(26, string("discriminator"));
    m.bool(27, boolean("readOnly"), false);
    if let Some(e) = obj.get("example") {
        m.message(30, any_yaml(e));
    }
    for (name, value) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
        let mut named = Msg::default();
        named.string(1, name);
        named.message(2, any_yaml(value));
        m.message(31, named);
    }
    m
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal protobuf reader for the checks: (field, wire type, payload) of one level.
    fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let payload = match key & 7 {
                0 => varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let (p, rest) = b.split_at(8);
                    b = rest;
                    p.to_vec()
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let (p, rest) = b.split_at(n);
                    b = rest;
                    p.to_vec()
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, payload));
        }
        out
    }

    fn field(b: &[u8], n: u64) -> Vec<Vec<u8>> {
        fields(b)
            .into_iter()
            .filter(|(f, _)| *f == n)
            .map(|(_, p)| p)
            .collect()
    }

    #[test]
    fn definitions_carry_schemas_and_their_extensions() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "definitions": {
                "io.k8s.api.core.v1.ConfigMap": {
                    "type": "object",
                    "description": "ConfigMap holds configuration data.",
                    "required": ["metadata"],
                    "properties": {
                        "data": {"type": "object", "additionalProperties": {"type": "string"}},
                        "immutable": {"type": "boolean"},
                        "items": {"type": "array", "items": {"$ref": "#/definitions/x"}, "maxItems": 3},
                    },
                    "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}],
                },
            },
        });
        let bytes = encode_document(&doc);
        assert_eq!(field(&bytes, 1), vec![b"2.0".to_vec()]);
        let info = &field(&bytes, 2)[0];
        assert_eq!(field(info, 2), vec![b"v1.33.0".to_vec()]);
        let defs = &field(&bytes, 9)[0];
        let named = &field(defs, 1)[0];
        assert_eq!(
            field(named, 1),
            vec![b"io.k8s.api.core.v1.ConfigMap".to_vec()]
        );
        let schema = &field(named, 2)[0];
        assert_eq!(field(&field(schema, 22)[0], 1), vec![b"object".to_vec()]);
        assert_eq!(field(schema, 19), vec![b"metadata".to_vec()]);
        let ext = &field(schema, 31)[0];
        assert_eq!(
            field(ext, 1),
            vec![b"x-kubernetes-group-version-kind".to_vec()]
        );
        let yaml = String::from_utf8(field(&field(ext, 2)[0], 2)[0].clone()).unwrap();
        let gvk: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(gvk[0]["kind"], "ConfigMap");
        let props = &field(schema, 25)[0];
        let names: Vec<String> = field(props, 1)
            .iter()
            .map(|p| String::from_utf8(field(p, 1)[0].clone()).unwrap())
            .collect();
        assert_eq!(names, ["data", "immutable", "items"]);
        // data: additionalProperties is a schema (oneof field 1).
        let data = &field(&field(props, 1)[0], 2)[0];
        let additional = &field(data, 21)[0];
        assert_eq!(
            field(&field(&field(additional, 1)[0], 22)[0], 1),
            vec![b"string".to_vec()]
        );
        // items: a $ref inside ItemsItem, and maxItems as a varint.
        let items = &field(&field(props, 1)[2], 2)[0];
        assert_eq!(
            field(&field(&field(items, 23)[0], 1)[0], 1),
            vec![b"#/definitions/x".to_vec()]
        );
        assert_eq!(field(items, 14)[0][0], 3);
    }

    #[test]
    fn false_additional_properties_is_written() {
        let bytes = schema_msg(&json!({"additionalProperties": false})).0;
        let a = &field(&bytes, 21)[0];
        assert_eq!(fields(a), vec![(2, 0u64.to_le_bytes().to_vec())]);
    }
}
