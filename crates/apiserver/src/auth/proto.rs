//! Just enough of the Kubernetes protobuf encoding to read the request bodies kubectl sends in
//! protobuf to the auth APIs (`kubectl auth whoami|can-i`, `kubectl create token`): the
//! `k8s\0` envelope (`runtime.Unknown`) and the few spec messages those commands fill in,
//! turned into the JSON the handlers read. Field numbers are upstream's `generated.proto`
//! facts. Answers are JSON (the clients accept it).

use serde_json::{Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// Whether the request body is protobuf.
pub(crate) fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim() == "application/vnd.kubernetes.protobuf")
}

/// One field of a message: (number, value).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of a message, in order; `None` on malformed input.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(buf, &mut pos)?))),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                out.push((num, Field::Bytes(buf.get(pos..end)?)));
                pos = end;
            }
            1 => pos = pos.checked_add(8)?,
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
    }
    Some(out)
}

fn string(fields: &[(u64, Field<'_>)], num: u64) -> Option<String> {
    fields.iter().rev().find_map(|(n, f)| match f {
        Field::Bytes(b) if *n == num => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    })
}

fn strings(fields: &[(u64, Field<'_>)], num: u64) -> Vec<String> {
    fields
        .iter()
        .filter_map(|(n, f)| match f {
            Field::Bytes(b) if *n == num => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn message<'a>(fields: &[(u64, Field<'a>)], num: u64) -> Option<Vec<(u64, Field<'a>)>> {
    fields.iter().rev().find_map(|(n, f)| match f {
        Field::Bytes(b) if *n == num => self::fields(b),
        _ => None,
    })
}

fn int(fields: &[(u64, Field<'_>)], num: u64) -> Option<i64> {
    fields.iter().rev().find_map(|(n, f)| match f {
        Field::Varint(v) if *n == num => i64::try_from(*v).ok(),
        _ => None,
    })
}

/// Sets `obj[key]` to a string when present and not empty.
fn put(obj: &mut Value, key: &str, v: Option<String>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        obj[key] = json!(v);
    }
}

/// `ObjectMeta` (name 1, namespace 3) as JSON.
fn metadata(f: &[(u64, Field<'_>)]) -> Value {
    let mut m = json!({});
    if let Some(meta) = message(f, 1) {
        put(&mut m, "name", string(&meta, 1));
        put(&mut m, "namespace", string(&meta, 3));
    }
    m
}

/// The JSON of a protobuf body of `kind`, or why it cannot be read.
pub(crate) fn to_json(body: &[u8], kind: &str) -> Result<Value, String> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf envelope")?;
    let unknown = fields(inner).ok_or("malformed protobuf")?;
    let type_meta = message(&unknown, 1).unwrap_or_default();
    let got_kind = string(&type_meta, 2).unwrap_or_default();
    if got_kind != kind {
        return Err(format!("expected a {kind}, got {got_kind:?}"));
    }
    let raw = match unknown.iter().find(|(n, _)| *n == 2) {
        Some((_, Field::Bytes(b))) => *b,
        _ => &[],
    };
    let obj = fields(raw).ok_or("malformed protobuf")?;
    let spec = message(&obj, 2).unwrap_or_default();
    let mut out = json!({ "kind": kind, "metadata": metadata(&obj), "spec": {} });
    let s = &mut out["spec"];
    match kind {
        "SelfSubjectReview" => {}
        "TokenRequest" => {
            let aud = strings(&spec, 1);
            if !aud.is_empty() {
                s["audiences"] = json!(aud);
            }
            if let Some(secs) = int(&spec, 4) {
                s["expirationSeconds"] = json!(secs);
            }
            if let Some(r) = message(&spec, 3) {
                let mut b = json!({});
                put(&mut b, "kind", string(&r, 1));
                put(&mut b, "apiVersion", string(&r, 2));
                put(&mut b, "name", string(&r, 3));
                put(&mut b, "uid", string(&r, 4));
                s["boundObjectRef"] = b;
            }
        }
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            // SelfSubjectAccessReviewSpec: resourceAttributes 1, nonResourceAttributes 2;
            // SubjectAccessReviewSpec: the same, then user 3, groups 4, uid 6.
            if let Some(r) = message(&spec, 1) {
                let mut a = json!({});
                for (key, num) in [
                    ("namespace", 1),
                    ("verb", 2),
                    ("group", 3),
                    ("version", 4),
                    ("resource", 5),
                    ("subresource", 6),
                    ("name", 7),
                ] {
                    put(&mut a, key, string(&r, num));
                }
                s["resourceAttributes"] = a;
            }
            if let Some(r) = message(&spec, 2) {
                let mut a = json!({});
                put(&mut a, "path", string(&r, 1));
                put(&mut a, "verb", string(&r, 2));
                s["nonResourceAttributes"] = a;
            }
            if kind != "SelfSubjectAccessReview" {
                put(s, "user", string(&spec, 3));
                let groups = strings(&spec, 4);
                if !groups.is_empty() {
                    s["groups"] = json!(groups);
                }
                put(s, "uid", string(&spec, 6));
            }
        }
        "SelfSubjectRulesReview" => put(s, "namespace", string(&spec, 1)),
        "TokenReview" => {
            put(s, "token", string(&spec, 1));
            let aud = strings(&spec, 2);
            if !aud.is_empty() {
                s["audiences"] = json!(aud);
            }
        }
        _ => return Err(format!("protobuf bodies of {kind} are not supported")),
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ld(num: u64, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn reads_a_self_subject_access_review() {
        let attrs = [ld(1, b"default"), ld(2, b"list"), ld(5, b"pods")].concat();
        let spec = ld(1, &attrs);
        let obj = ld(2, &spec);
        let type_meta = [
            ld(1, b"authorization.k8s.io/v1"),
            ld(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let unknown = [ld(1, &type_meta), ld(2, &obj)].concat();
        let body = [MAGIC, &unknown].concat();
        let v = to_json(&body, "SelfSubjectAccessReview").unwrap();
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({ "namespace": "default", "verb": "list", "resource": "pods" })
        );
        assert!(to_json(&body, "TokenRequest").is_err());
    }

    #[test]
    fn reads_a_token_request() {
        let bound = [ld(1, b"Pod"), ld(3, b"worker")].concat();
        let mut spec = [ld(1, b"aud1"), ld(3, &bound)].concat();
        spec.extend_from_slice(&[4 << 3, 0x90, 0x1c]); // expirationSeconds 3600
        let obj = ld(2, &spec);
        let type_meta = ld(2, b"TokenRequest");
        let body = [MAGIC, &[ld(1, &type_meta), ld(2, &obj)].concat()].concat();
        let v = to_json(&body, "TokenRequest").unwrap();
        assert_eq!(v["spec"]["audiences"], json!(["aud1"]));
        assert_eq!(v["spec"]["expirationSeconds"], 3600);
        assert_eq!(
            v["spec"]["boundObjectRef"],
            json!({ "kind": "Pod", "name": "worker" })
        );
    }
}
