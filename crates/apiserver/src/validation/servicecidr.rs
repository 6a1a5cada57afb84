//! networking.k8s.io/v1 `IPAddress` and `ServiceCIDR` (KEP-1880), as upstream's
//! `ValidateIPAddress`/`ValidateIPAddressUpdate` (the name a canonical IP address,
//! `spec.parentRef` with its resource and name required and path-segment-safe, immutable) and
//! `ValidateServiceCIDR`/`ValidateServiceCIDRUpdate` (one or two CIDRs, one per IP family, each
//! valid and canonical as apimachinery's strict `IsValidCIDR`; on update the CIDRs are
//! immutable except for adding a second family to a single-family ServiceCIDR, the dual-stack
//! upgrade upstream allows since v1.33.1). The `/status` update of a ServiceCIDR checks
//! metadata only, as upstream. Values upstream prints as Go structs (`%#v` of the spec) are
//! spelled in Go syntax here.

use serde_json::Value;

use super::ip::{cidr_problems, ip_problems, parse_cidr_sloppy};
use super::{NameRule, go_strings, invalid, q, required, str_of, validate_name};
use crate::status::Cause;

/// Upstream's `FieldImmutableErrorMsg`.
const IMMUTABLE: &str = "field is immutable";

/// `IPAddress` (`ValidateIPAddress` on create, `ValidateIPAddressUpdate` on update).
pub(super) fn ip_address(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let parent = spec.get("parentRef").filter(|p| !p.is_null());
    if let Some(old) = old {
        let before = old.pointer("/spec/parentRef").filter(|p| !p.is_null());
        if before.map(parent_ref_shown_some) != parent.map(parent_ref_shown_some) {
            return vec![invalid(
                "spec.parentRef",
                &parent_ref_shown(parent),
                IMMUTABLE,
            )];
        }
        return Vec::new();
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes: Vec<Cause> = ip_problems(name)
        .into_iter()
        .map(|p| invalid("metadata.name", &q(name), &p))
        .collect();
    let Some(parent) = parent else {
        causes.push(required("spec.parentRef", ""));
        return causes;
    };
    let group = str_of(parent, "group");
    if !group.is_empty() {
        for p in validate_name(NameRule::Subdomain, group) {
            causes.push(invalid("spec.parentRef.group", &q(group), &p));
        }
    }
    for (field, needed) in [("resource", true), ("name", true), ("namespace", false)] {
        let v = str_of(parent, field);
        let path = format!("spec.parentRef.{field}");
        if v.is_empty() {
            if needed {
                causes.push(required(path, ""));
            }
            continue;
        }
        for p in validate_name(NameRule::PathSegment, v) {
            causes.push(invalid(path.clone(), &q(v), &p));
        }
    }
    causes
}

fn parent_ref_shown_some(p: &Value) -> String {
    parent_ref_shown(Some(p))
}

/// A parent reference as Go prints the pointer it is (`%#v` of `*networking.ParentReference`).
fn parent_ref_shown(parent: Option<&Value>) -> String {
    match parent {
        None => "(*networking.ParentReference)(nil)".into(),
        Some(p) => format!(
            "&networking.ParentReference{{Group:{}, Resource:{}, Namespace:{}, Name:{}}}",
            q(str_of(p, "group")),
            q(str_of(p, "resource")),
            q(str_of(p, "namespace")),
            q(str_of(p, "name"))
        ),
    }
}

/// `ServiceCIDR` (`ValidateServiceCIDR` on create, `ValidateServiceCIDRUpdate` on update of the
/// main resource).
pub(super) fn service_cidr(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let cidrs = cidrs_of(obj);
    let Some(old) = old else {
        return cidrs_problems(&cidrs);
    };
    let before = cidrs_of(old);
    let path = "spec.cidrs";
    if before.len() == cidrs.len() {
        return before
            .iter()
            .zip(&cidrs)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (_, b))| invalid(format!("{path}[{i}]"), &q(b), IMMUTABLE))
            .collect();
    }
    if before.len() == 1 && cidrs.len() == 2 {
        let mut causes = Vec::new();
        if cidrs[0] != before[0] {
            causes.push(invalid(format!("{path}[0]"), &q(&cidrs[0]), IMMUTABLE));
        }
        causes.extend(cidrs_problems(&cidrs));
        return causes;
    }
    vec![invalid(path, &go_strings(&cidrs), IMMUTABLE)]
}

fn cidrs_of(obj: &Value) -> Vec<String> {
    obj.pointer("/spec/cidrs")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Go's `%#v` of the internal `networking.ServiceCIDRSpec`.
fn spec_shown(cidrs: &[String]) -> String {
    let shown: Vec<String> = cidrs.iter().map(|s| q(s)).collect();
    format!(
        "networking.ServiceCIDRSpec{{CIDRs:[]string{{{}}}}}",
        shown.join(", ")
    )
}

/// Upstream's `validateServiceCIDRSpec`: the list of CIDRs.
fn cidrs_problems(cidrs: &[String]) -> Vec<Cause> {
    let path = "spec.cidrs";
    if cidrs.is_empty() {
        return vec![required(path, "at least one CIDR required")];
    }
    if cidrs.len() > 2 {
        return vec![invalid(
            path,
            &spec_shown(cidrs),
            "may only hold up to 2 values",
        )];
    }
    if cidrs.len() == 2 {
        let families: Vec<Option<bool>> = cidrs
            .iter()
            .map(|c| parse_cidr_sloppy(c).map(|(ip, _)| ip.is_ipv4()))
            .collect();
        let dual = matches!(
            (families[0], families[1]),
            (Some(a), Some(b)) if a != b
        );
        if !dual {
            return vec![invalid(
                path,
                &spec_shown(cidrs),
                "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and \
                 2001:db8::/64",
            )];
        }
    }
    cidrs
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            cidr_problems(c)
                .into_iter()
                .map(move |p| invalid(format!("{path}[{i}]"), &q(c), &p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    use crate::status::cause_lines as messages;

    #[test]
    fn ip_names() {
        assert!(ip_problems("10.0.0.1").is_empty());
        assert!(ip_problems("2001:db8::1").is_empty());
        assert_eq!(
            ip_problems("foo"),
            ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]
        );
        assert_eq!(ip_problems("010.0.0.1"), ["must not have leading 0s"]);
        assert_eq!(
            ip_problems("::ffff:10.0.0.1"),
            ["must not be an IPv4-mapped IPv6 address"]
        );
        assert_eq!(
            ip_problems("2001:DB8::1"),
            ["must be in canonical form (\"2001:db8::1\")"]
        );
    }

    #[test]
    fn cidrs() {
        assert!(cidr_problems("10.0.0.0/24").is_empty());
        assert!(cidr_problems("2001:db8::/64").is_empty());
        assert_eq!(
            cidr_problems("10.0.0.0"),
            ["must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
        );
        assert_eq!(
            cidr_problems("10.0.0.1/24"),
            ["must not have bits set beyond the prefix length"]
        );
        assert_eq!(
            cidr_problems("10.0.0.0/024"),
            ["must not have leading 0s in IP or prefix length"]
        );
        assert_eq!(
            cidr_problems("2001:DB8::/64"),
            ["must be in canonical form (\"2001:db8::/64\")"]
        );
    }

    #[test]
    fn ip_address_objects() {
        let ok = json!({"metadata": {"name": "10.0.0.1"},
            "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "d", "name": "s"}}});
        assert!(ip_address(&ok, None).is_empty());
        let bad = json!({"metadata": {"name": "10.0.0.01"}, "spec": {"parentRef": {"group": ""}}});
        assert_eq!(
            messages(&ip_address(&bad, None)),
            [
                "metadata.name: Invalid value: \"10.0.0.01\": must not have leading 0s",
                "spec.parentRef.resource: Required value",
                "spec.parentRef.name: Required value",
            ]
        );
        let none = json!({"metadata": {"name": "10.0.0.1"}, "spec": {}});
        assert_eq!(
            messages(&ip_address(&none, None)),
            ["spec.parentRef: Required value"]
        );
        let mut moved = ok.clone();
        moved["spec"]["parentRef"]["name"] = json!("t");
        assert_eq!(
            messages(&ip_address(&moved, Some(&ok))),
            [
                "spec.parentRef: Invalid value: &networking.ParentReference{Group:\"\", \
              Resource:\"services\", Namespace:\"d\", Name:\"t\"}: field is immutable"
            ]
        );
    }

    #[test]
    fn service_cidr_objects() {
        let cidr = |l: Value| json!({"metadata": {"name": "a"}, "spec": {"cidrs": l}});
        assert!(service_cidr(&cidr(json!(["10.0.0.0/24"])), None).is_empty());
        assert!(service_cidr(&cidr(json!(["10.0.0.0/24", "2001:db8::/64"])), None).is_empty());
        assert_eq!(
            messages(&service_cidr(&cidr(json!([])), None)),
            ["spec.cidrs: Required value: at least one CIDR required"]
        );
        assert_eq!(
            messages(&service_cidr(
                &cidr(json!(["10.0.0.0/24", "10.1.0.0/24"])),
                None
            )),
            [
                "spec.cidrs: Invalid value: networking.ServiceCIDRSpec{CIDRs:[]string{\"10.0.0.0/24\", \
                 \"10.1.0.0/24\"}}: may specify no more than one IP for each IP family, i.e \
                 192.168.0.0/24 and 2001:db8::/64"
            ]
        );
        assert_eq!(
            messages(&service_cidr(&cidr(json!(["10.0.0.1/24"])), None)),
            [
                "spec.cidrs[0]: Invalid value: \"10.0.0.1/24\": must not have bits set beyond the \
                 prefix length"
            ]
        );
        let old = cidr(json!(["10.0.0.0/24"]));
        assert_eq!(
            messages(&service_cidr(&cidr(json!(["10.1.0.0/24"])), Some(&old))),
            ["spec.cidrs[0]: Invalid value: \"10.1.0.0/24\": field is immutable"]
        );
        assert!(
            service_cidr(&cidr(json!(["10.0.0.0/24", "2001:db8::/64"])), Some(&old)).is_empty()
        );
        assert_eq!(
            messages(&service_cidr(&cidr(json!([])), Some(&old))),
            ["spec.cidrs: Invalid value: []string{}: field is immutable"]
        );
    }
}
