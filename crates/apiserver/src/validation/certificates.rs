//! certificates.k8s.io/v1: upstream's `ValidateCertificateSigningRequestCreate` (the spec; the
//! status is the approval and signing paths' business, see `crate::certificates`).

use base64::Engine as _;
use serde_json::Value;

use super::{NameRule, dns_problems, duplicate, invalid, not_supported, q, required, too_long};
use crate::registry::ResourceInfo;
use crate::status::Cause;

/// The key usages a CSR may ask for (upstream's `allValidUsages`).
const USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// The signer v1beta1 defaulted to, refused by v1.
const LEGACY_SIGNER: &str = "kubernetes.io/legacy-unknown";

/// The shortest certificate a CSR may ask for.
const MIN_EXPIRATION_SECONDS: i64 = 600;

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    // The spec never changes after create (the update path keeps the stored one).
    if info.kind != "CertificateSigningRequest" || old.is_some() {
        return Vec::new();
    }
    let mut causes = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let request = spec.get("request").and_then(Value::as_str).unwrap_or("");
    if let Err(e) = check_request(request) {
        causes.push(invalid("spec.request", &go_bytes(request), &e));
    }
    let usages: Vec<&str> = spec
        .get("usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if usages.is_empty() {
        causes.push(required("spec.usages", "usages must be provided"));
    }
    for (i, u) in usages.iter().enumerate() {
        if !USAGES.contains(u) {
            causes.push(not_supported(format!("spec.usages[{i}]"), &q(u), USAGES));
        }
    }
    for (i, u) in usages.iter().enumerate() {
        if usages[..i].contains(u) {
            causes.push(duplicate(format!("spec.usages[{i}]"), &q(u)));
        }
    }
    let signer = spec.get("signerName").and_then(Value::as_str).unwrap_or("");
    if signer == LEGACY_SIGNER {
        causes.push(invalid(
            "spec.signerName",
            &q(signer),
            "the legacy signerName is not allowed via this API version",
        ));
    } else {
        causes.extend(signer_name(signer));
    }
    if let Some(s) = spec.get("expirationSeconds").and_then(Value::as_i64)
        && s < MIN_EXPIRATION_SECONDS
    {
        causes.push(invalid(
            "spec.expirationSeconds",
            &s.to_string(),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    causes
}

/// The PKCS#10 request must be the first PEM block, parse, and carry a valid self-signature
/// (upstream's `validateCSR`).
fn check_request(encoded: &str) -> Result<(), String> {
    crate::certificates::with_request(encoded, |request| {
        request
            .verify_signature()
            .map_err(|e| format!("x509: signature verification failed: {e}"))
    })
}

/// Go's `%#v` of a byte slice (how upstream shows an invalid `spec.request`).
fn go_bytes(encoded: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_default();
    let items: Vec<String> = bytes.iter().map(|b| format!("{b:#04x}")).collect();
    format!("[]byte{{{}}}", items.join(", "))
}

/// Upstream's `ValidateSignerName`: `<domain with at least two labels>/<path>`.
fn signer_name(signer: &str) -> Vec<Cause> {
    const FIELD: &str = "spec.signerName";
    const PATH_MAX: usize = 253 + 63 + 1;
    let mut causes = Vec::new();
    if signer.is_empty() {
        causes.push(required(FIELD, ""));
        return causes;
    }
    let Some((domain, path)) = signer.split_once('/').filter(|(_, p)| !p.contains('/')) else {
        causes.push(invalid(
            FIELD,
            &q(signer),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
        return causes;
    };
    if domain.len() > 253 {
        causes.push(too_long(FIELD, 253));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if let Some((label, errs)) = labels
        .iter()
        .map(|l| (l, dns_problems(NameRule::Label, l)))
        .find(|(_, e)| !e.is_empty())
    {
        for e in errs {
            causes.push(invalid(
                FIELD,
                &q(domain),
                &format!("validating label {label:?}: {e}"),
            ));
        }
    }
    if labels.len() < 2 {
        causes.push(invalid(
            FIELD,
            &q(domain),
            "should be a domain with at least two segments separated by dots",
        ));
    }
    if path.len() > PATH_MAX {
        causes.push(too_long(FIELD, PATH_MAX));
    }
    if let Some((segment, errs)) = path
        .split('.')
        .map(|s| (s, dns_problems(NameRule::Subdomain, s)))
        .find(|(_, e)| !e.is_empty())
    {
        for e in errs {
            causes.push(invalid(
                FIELD,
                &q(path),
                &format!("validating component {segment:?}: {e}"),
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn csr_info() -> &'static ResourceInfo {
        crate::registry::REGISTRY
            .find("certificates.k8s.io", "v1", "certificatesigningrequests")
            .expect("registered")
    }

    fn request_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let csr = params.serialize_request(&key).expect("csr");
        base64::engine::general_purpose::STANDARD.encode(csr.pem().expect("pem"))
    }

    fn fields(causes: &[Cause]) -> Vec<(&str, &str)> {
        causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect()
    }

    #[test]
    fn a_good_request_passes() {
        let csr = json!({"spec": {
            "request": request_pem(),
            "signerName": "example.com/my-signer",
            "usages": ["client auth", "digital signature"],
            "expirationSeconds": 3600,
        }});
        assert!(validate(csr_info(), &csr, None).is_empty());
    }

    #[test]
    fn bad_requests_get_upstreams_causes() {
        let csr = json!({"spec": {
            "request": base64::engine::general_purpose::STANDARD.encode("hi"),
            "signerName": "signer",
            "usages": ["client auth", "bogus", "client auth"],
            "expirationSeconds": 60,
        }});
        let causes = validate(csr_info(), &csr, None);
        assert_eq!(
            fields(&causes),
            [
                ("spec.request", "FieldValueInvalid"),
                ("spec.usages[1]", "FieldValueNotSupported"),
                ("spec.usages[2]", "FieldValueDuplicate"),
                ("spec.signerName", "FieldValueInvalid"),
                ("spec.expirationSeconds", "FieldValueInvalid"),
            ],
            "{causes:?}"
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: []byte{0x68, 0x69}: PEM block type must be CERTIFICATE REQUEST"
        );
        assert!(
            causes[3]
                .message
                .contains("of the form 'example.com/signer-name'")
        );
        let empty = validate(
            csr_info(),
            &json!({"spec": {"request": request_pem()}}),
            None,
        );
        assert_eq!(
            fields(&empty),
            [
                ("spec.usages", "FieldValueRequired"),
                ("spec.signerName", "FieldValueRequired"),
            ]
        );
    }

    #[test]
    fn signer_names_need_a_dotted_domain_and_a_path() {
        assert!(signer_name("kubernetes.io/kube-apiserver-client").is_empty());
        assert!(signer_name("example.com/ns.name").is_empty());
        let one_label = signer_name("example/x");
        assert!(
            one_label[0]
                .message
                .contains("should be a domain with at least two segments"),
            "{one_label:?}"
        );
        let bad_path = signer_name("example.com/Bad_Path");
        assert!(
            bad_path[0]
                .message
                .starts_with("Invalid value: \"Bad_Path\": validating component \"Bad_Path\""),
            "{bad_path:?}"
        );
        assert_eq!(
            signer_name(LEGACY_SIGNER),
            Vec::new(),
            "the legacy signer is refused by validate, not by the name rules"
        );
    }
}
