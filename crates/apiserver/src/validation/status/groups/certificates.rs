//! certificates.k8s.io/v1 CSR status updates: `ValidateCertificateSigningRequestStatusUpdate`
//! (a signer writes the certificate and its own conditions; `/approval` owns Approved and
//! Denied, which `rest::handlers::merge_update` keeps from the stored CSR, so the rules against
//! adding or changing them cannot fail here). What the stored CSR already holds is tolerated,
//! as upstream's compatibility options do: empty or duplicate condition types, Approved with
//! Denied, an unparsable certificate. The spec is the stored one, validated on create.

use base64::Engine as _;
use serde_json::Value;
use x509_parser::prelude::parse_x509_certificate;

use super::status;
use crate::status::Cause;
use crate::validation::{duplicate, forbidden, invalid, items, not_supported, q, required, str_of};

/// Condition types whose status may only be True.
const TRUE_ONLY: &[&str] = &["Approved", "Denied", "Failed"];

/// `ValidateCertificateSigningRequestStatusUpdate` of the stored `old` to `obj`.
pub(super) fn csr(obj: &Value, old: &Value) -> Vec<Cause> {
    let conditions = items(status(obj), "conditions");
    let old_conditions = items(status(old), "conditions");
    let types = |conds: &[Value]| -> Vec<String> {
        conds
            .iter()
            .map(|c| str_of(c, "type").to_string())
            .collect()
    };
    let old_types = types(old_conditions);
    let allow_empty_type = old_types.iter().any(String::is_empty);
    let allow_duplicate_types = old_types
        .iter()
        .enumerate()
        .any(|(i, t)| old_types[..i].contains(t));
    let allow_approved_and_denied =
        old_types.iter().any(|t| t == "Approved") && old_types.iter().any(|t| t == "Denied");

    let mut causes = Vec::new();
    let (mut approved, mut denied) = (false, false);
    for (i, c) in conditions.iter().enumerate() {
        let at = format!("status.conditions[{i}]");
        let ty = str_of(c, "type");
        if !allow_empty_type && ty.is_empty() {
            causes.push(required(format!("{at}.type"), ""));
        }
        let allowed: &[&str] = if TRUE_ONLY.contains(&ty) {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        let st = str_of(c, "status");
        if st.is_empty() {
            causes.push(required(format!("{at}.status"), ""));
        } else if !allowed.contains(&st) {
            causes.push(not_supported(format!("{at}.status"), &q(st), allowed));
        }
        if !allow_approved_and_denied {
            let exclusive = match ty {
                "Approved" => {
                    approved = true;
                    denied
                }
                "Denied" => {
                    denied = true;
                    approved
                }
                _ => false,
            };
            if exclusive {
                causes.push(invalid(
                    format!("{at}.type"),
                    &q(ty),
                    "Approved and Denied conditions are mutually exclusive",
                ));
            }
        }
        if !allow_duplicate_types
            && conditions[..i]
                .iter()
                .any(|prev| str_of(prev, "type") == ty)
        {
            causes.push(duplicate(format!("{at}.type"), &q(ty)));
        }
    }

    let certificate = status(obj)
        .get("certificate")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let old_certificate = status(old)
        .get("certificate")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (new_bytes, old_bytes) = (decoded(certificate), decoded(old_certificate));
    let allow_arbitrary = new_bytes == old_bytes || check_certificate(&old_bytes).is_err();
    if !allow_arbitrary && let Err(e) = check_certificate(&new_bytes) {
        causes.push(invalid("status.certificate", &q("<certificate data>"), &e));
    }

    for ty in TRUE_ONLY {
        let count = |conds: &[Value]| conds.iter().filter(|c| str_of(c, "type") == *ty).count();
        if count(conditions) < count(old_conditions) {
            causes.push(forbidden(
                "status.conditions",
                &format!("updates may not remove a condition of type {}", q(ty)),
            ));
        }
    }
    if new_bytes != old_bytes && !old_bytes.is_empty() {
        causes.push(forbidden(
            "status.certificate",
            "updates may not modify existing certificate content",
        ));
    }
    causes
}

/// The bytes of a base64 `[]byte` field (what does not decode counts as itself).
fn decoded(encoded: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// Upstream's `validateCertificate`: empty, or only `CERTIFICATE` PEM blocks without headers,
/// each holding at least one DER certificate, and at least one block.
fn check_certificate(pem: &[u8]) -> Result<(), String> {
    if pem.is_empty() {
        return Ok(());
    }
    let mut rest = pem;
    let mut blocks = 0;
    while let Some((block, after)) = pem_decode(rest) {
        if block.kind != "CERTIFICATE" {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found {}",
                q(&block.kind)
            ));
        }
        if block.headers {
            return Err("no PEM block headers are permitted".into());
        }
        blocks += 1;
        let mut der = block.bytes.as_slice();
        let mut certs = 0;
        while !der.is_empty() {
            let (left, _) = parse_x509_certificate(der)
                .map_err(|_| "x509: malformed certificate".to_string())?;
            der = left;
            certs += 1;
        }
        if certs == 0 {
            return Err("found CERTIFICATE PEM block containing 0 certificates".into());
        }
        rest = after;
    }
    if blocks == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".into());
    }
    Ok(())
}

/// A PEM block as Go's `pem.Decode` finds it.
struct Block {
    kind: String,
    headers: bool,
    bytes: Vec<u8>,
}

/// One line without its end (`\n`, and trailing spaces, tabs and `\r`), and what follows it.
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r'))
        .map_or(0, |i| i + 1);
    (&line[..end], rest)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Go's `pem.Decode`: the next well-formed block (type line, optional `Key: value` headers,
/// base64 body, matching END line) and the data after it; malformed candidates are skipped.
fn pem_decode(data: &[u8]) -> Option<(Block, &[u8])> {
    const BEGIN: &[u8] = b"\n-----BEGIN ";
    const END: &[u8] = b"\n-----END ";
    const DASHES: &[u8] = b"-----";
    let mut rest = data;
    loop {
        if rest.starts_with(&BEGIN[1..]) {
            rest = &rest[BEGIN.len() - 1..];
        } else {
            let i = find(rest, BEGIN)?;
            rest = &rest[i + BEGIN.len()..];
        }
        let (type_line, after) = line(rest);
        rest = after;
        let Some(kind) = type_line.strip_suffix(DASHES) else {
            continue;
        };
        let mut headers = false;
        loop {
            if rest.is_empty() {
                return None;
            }
            let (l, next) = line(rest);
            if !l.contains(&b':') {
                break;
            }
            headers = true;
            rest = next;
        }
        let (end, trailer) = if !headers && rest.starts_with(&END[1..]) {
            (0, END.len() - 1)
        } else {
            match find(rest, END) {
                Some(i) => (i, i + END.len()),
                None => continue,
            }
        };
        let trailer_len = kind.len() + DASHES.len();
        let Some(end_trailer) = rest.get(trailer..trailer + trailer_len) else {
            continue;
        };
        if !end_trailer.starts_with(kind) || !end_trailer.ends_with(DASHES) {
            continue;
        }
        if !line(&rest[trailer + trailer_len..]).0.is_empty() {
            continue;
        }
        let body: Vec<u8> = rest[..end]
            .iter()
            .copied()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .collect();
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&body) else {
            continue;
        };
        let (_, after) = line(&rest[end + END.len() - 1..]);
        return Some((
            Block {
                kind: String::from_utf8_lossy(kind).into_owned(),
                headers,
                bytes,
            },
            after,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, info};
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn cert_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(vec!["node-1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem()
    }

    fn cond(ty: &str, st: &str) -> Value {
        json!({"type": ty, "status": st, "reason": "R", "message": "m",
               "lastUpdateTime": "2026-01-01T00:00:00Z"})
    }

    fn csrs() -> &'static crate::registry::ResourceInfo {
        info("certificates.k8s.io", "v1", "certificatesigningrequests")
    }

    #[test]
    fn pem_blocks_as_go_reads_them() {
        let pem = cert_pem();
        assert_eq!(check_certificate(pem.as_bytes()), Ok(()));
        let two = format!("junk before\n{pem}{pem}");
        assert_eq!(check_certificate(two.as_bytes()), Ok(()));
        assert_eq!(check_certificate(b""), Ok(()));
        assert_eq!(
            check_certificate(b"not pem"),
            Err("must contain at least one CERTIFICATE PEM block".into())
        );
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            check_certificate(key.as_bytes()),
            Err("only CERTIFICATE PEM blocks are allowed, found \"PRIVATE KEY\"".into())
        );
        let headed = "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            check_certificate(headed.as_bytes()),
            Err("no PEM block headers are permitted".into())
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            check_certificate(garbage.as_bytes()),
            Err("x509: malformed certificate".into())
        );
        let empty = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        assert_eq!(
            check_certificate(empty.as_bytes()),
            Err("found CERTIFICATE PEM block containing 0 certificates".into())
        );
    }

    #[test]
    fn signers_write_a_certificate_once() {
        let old = json!({"spec": {"signerName": "example.com/signer"},
                         "status": {"conditions": [cond("Approved", "True")]}});
        let pem = b64(&cert_pem());
        let issued = json!({"certificate": pem, "conditions": [cond("Approved", "True")]});
        assert!(check(csrs(), &old, issued.clone()).is_empty());
        assert_eq!(
            check(
                csrs(),
                &old,
                json!({"certificate": b64("nope"),
                                      "conditions": [cond("Approved", "True")]})
            ),
            [
                "status.certificate: Invalid value: \"<certificate data>\": must contain at least \
              one CERTIFICATE PEM block"
            ]
        );
        let mut signed = old.clone();
        signed["status"] = issued;
        assert_eq!(
            check(
                csrs(),
                &signed,
                json!({"certificate": b64(&cert_pem()),
                                         "conditions": [cond("Approved", "True")]})
            ),
            ["status.certificate: Forbidden: updates may not modify existing certificate content"]
        );
    }

    #[test]
    fn conditions() {
        let old = json!({"spec": {}, "status": {"conditions": [cond("Failed", "True")]}});
        assert_eq!(
            check(
                csrs(),
                &old,
                json!({"conditions": [cond("", "True"), cond("Custom", ""),
                                      cond("Custom", "Maybe"), cond("Approved", "False"),
                                      cond("Denied", "True")]})
            ),
            [
                "status.conditions[0].type: Required value",
                "status.conditions[1].status: Required value",
                "status.conditions[2].status: Unsupported value: \"Maybe\": supported values: \
                 \"False\", \"True\", \"Unknown\"",
                "status.conditions[2].type: Duplicate value: \"Custom\"",
                "status.conditions[3].status: Unsupported value: \"False\": supported values: \"True\"",
                "status.conditions[4].type: Invalid value: \"Denied\": Approved and Denied \
                 conditions are mutually exclusive",
                "status.conditions: Forbidden: updates may not remove a condition of type \"Failed\"",
            ]
        );
        // What the stored CSR already has is tolerated.
        let odd =
            json!({"spec": {}, "status": {"conditions": [cond("", "True"), cond("", "True")]}});
        assert!(
            check(
                csrs(),
                &odd,
                json!({"conditions": [cond("", "True"), cond("", "True")]})
            )
            .is_empty()
        );
    }
}
