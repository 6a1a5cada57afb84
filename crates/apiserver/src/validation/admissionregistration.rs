//! admissionregistration.k8s.io/v1 as upstream v1.33's `pkg/apis/admissionregistration/validation`:
//!
//! - `ValidatingWebhookConfiguration`/`MutatingWebhookConfiguration` (create and update):
//!   webhook names (fully qualified: a DNS subdomain of at least three segments; unique),
//!   `rules` (operations, `*` alone, apiGroups/apiVersions required and `*` alone,
//!   resources and subresources with their `*` rules, scope), `failurePolicy`,
//!   `matchPolicy`, `sideEffects` (required; `None`/`NoneOnDryRun`), `timeoutSeconds`
//!   1–30, `admissionReviewVersions` (required, no duplicates, DNS-1035, one of `v1`,
//!   `v1beta1`), `reinvocationPolicy`, the two selectors, `clientConfig` (url xor service;
//!   url https with a host, no user, fragment or query; service name, namespace, port and
//!   path segments), `matchConditions` (names qualified and unique, expressions required and
//!   compiling over `object`, `oldObject`, `request`, `authorizer`). On update, as upstream,
//!   the side-effect, review-version and unique-name rules apply only when the stored
//!   object already kept them, and unchanged match conditions are not compiled again.
//! - `ValidatingAdmissionPolicy`: `failurePolicy`, `paramKind` (apiVersion and kind),
//!   `matchConstraints` (required, with `resourceRules`; match policy, selectors, named rules
//!   with `resourceNames`), `matchConditions`, `variables` (CEL identifiers, expressions
//!   compiling), `validations` or `auditAnnotations` required, each validation's
//!   expression, `messageExpression`, `message` and `reason`, audit annotation keys
//!   (qualified with the policy name, unique, at most 20) and value expressions.
//! - `ValidatingAdmissionPolicyBinding`: `policyName`, `paramRef` (name xor selector,
//!   `parameterNotFoundAction`), `matchResources` (upstream's path typo
//!   `spec.matchResouces` kept), `validationActions`.
//!
//! Expressions are compiled by `crate::admission_policy::compile_error` (the CEL crate's
//! parser plus declared names; no type checking, so upstream's type errors such as a
//! validation not returning a bool are not reported). Fields upstream defaults
//! (`failurePolicy`, `matchPolicy`, the selectors, a service's `port`) are accepted when
//! absent, as rk3s does not default them. Not checked: the policy's `status` on `/status`
//! writes, that the user may read the `paramKind`, CEL cost limits, `TooMany` of match
//! conditions.

use std::collections::HashSet;

use serde_json::Value;

use crate::admission_policy::{ExpressionKind, compile_error};
use crate::registry::ResourceInfo;
use crate::status::Cause;
use crate::validation::{
    NameRule, dns_problems, duplicate, forbidden, invalid, items, label_selector_causes,
    not_supported, port_num_problems, q, qualified_name_problems, required, str_of, validate_name,
};

pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    match info.kind {
        "ValidatingWebhookConfiguration" => webhook_configuration(obj, old, false, &mut out),
        "MutatingWebhookConfiguration" => webhook_configuration(obj, old, true, &mut out),
        "ValidatingAdmissionPolicy" => policy(obj, old, &mut out),
        "ValidatingAdmissionPolicyBinding" => binding(obj, &mut out),
        _ => {}
    }
    out
}

/// Go's `%#v` of a slice of strings of type `ty`.
fn go_list(ty: &str, list: &[Value]) -> String {
    let items: Vec<String> = list.iter().map(|v| q(v.as_str().unwrap_or(""))).collect();
    format!("[]{ty}{{{}}}", items.join(", "))
}

fn has_wildcard(list: &[Value]) -> bool {
    list.iter().any(|v| v == "*")
}

fn opt_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

// ---- rules ---------------------------------------------------------------------------------

fn resources(list: &[Value], path: &str, out: &mut Vec<Cause>) {
    if list.is_empty() {
        out.push(required(path, ""));
    }
    let mut res_with_wildcard_sub = HashSet::new();
    let mut sub_with_wildcard_res = HashSet::new();
    let (mut double, mut single, mut without_sub) = (false, false, false);
    for (i, v) in list.iter().enumerate() {
        let rs = v.as_str().unwrap_or("");
        let at = format!("{path}[{i}]");
        if rs.is_empty() {
            out.push(required(at, ""));
            continue;
        }
        double |= rs == "*/*";
        single |= rs == "*";
        let Some((res, sub)) = rs.split_once('/') else {
            without_sub = rs != "*";
            continue;
        };
        if res_with_wildcard_sub.contains(res) {
            out.push(invalid(
                &at,
                &q(rs),
                &format!("if '{res}/*' is present, must not specify {rs}"),
            ));
        }
        if sub_with_wildcard_res.contains(sub) {
            out.push(invalid(
                &at,
                &q(rs),
                &format!("if '*/{sub}' is present, must not specify {rs}"),
            ));
        }
        if sub == "*" {
            res_with_wildcard_sub.insert(res.to_string());
        }
        if res == "*" {
            sub_with_wildcard_res.insert(sub.to_string());
        }
    }
    if list.len() > 1 && double {
        out.push(invalid(
            path,
            &go_list("string", list),
            "if '*/*' is present, must not specify other resources",
        ));
    }
    if single && without_sub {
        out.push(invalid(
            path,
            &go_list("string", list),
            "if '*' is present, must not specify other resources without subresources",
        ));
    }
}

/// `validateRuleWithOperations` (subresources allowed).
fn rule_with_operations(r: &Value, path: &str, out: &mut Vec<Cause>) {
    let ops = items(r, "operations");
    if ops.is_empty() {
        out.push(required(format!("{path}.operations"), ""));
    }
    if ops.len() > 1 && has_wildcard(ops) {
        out.push(invalid(
            format!("{path}.operations"),
            &go_list("admissionregistration.OperationType", ops),
            "if '*' is present, must not specify other operations",
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        let op = op.as_str().unwrap_or("");
        if !["*", "CONNECT", "CREATE", "DELETE", "UPDATE"].contains(&op) {
            out.push(not_supported(
                format!("{path}.operations[{i}]"),
                &q(op),
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            ));
        }
    }
    let groups = items(r, "apiGroups");
    if groups.is_empty() {
        out.push(required(format!("{path}.apiGroups"), ""));
    }
    if groups.len() > 1 && has_wildcard(groups) {
        out.push(invalid(
            format!("{path}.apiGroups"),
            &go_list("string", groups),
            "if '*' is present, must not specify other API groups",
        ));
    }
    let versions = items(r, "apiVersions");
    if versions.is_empty() {
        out.push(required(format!("{path}.apiVersions"), ""));
    }
    if versions.len() > 1 && has_wildcard(versions) {
        out.push(invalid(
            format!("{path}.apiVersions"),
            &go_list("string", versions),
            "if '*' is present, must not specify other API versions",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v.as_str().unwrap_or("").is_empty() {
            out.push(required(format!("{path}.apiVersions[{i}]"), ""));
        }
    }
    resources(items(r, "resources"), &format!("{path}.resources"), out);
    if let Some(scope) = opt_str(r, "scope")
        && !["*", "Cluster", "Namespaced"].contains(&scope)
    {
        out.push(not_supported(
            format!("{path}.scope"),
            &q(scope),
            &["*", "Cluster", "Namespaced"],
        ));
    }
}

fn named_rule(r: &Value, path: &str, out: &mut Vec<Cause>) {
    let mut seen = HashSet::new();
    for (i, n) in items(r, "resourceNames").iter().enumerate() {
        let n = n.as_str().unwrap_or("");
        let at = format!("{path}.resourceNames[{i}]");
        for m in validate_name(NameRule::PathSegment, n) {
            out.push(invalid(&at, &q(n), &m));
        }
        if !seen.insert(n) {
            out.push(duplicate(&at, &q(n)));
        }
    }
    rule_with_operations(r, path, out);
}

fn selector(v: &Value, key: &str, path: &str, required_here: bool, out: &mut Vec<Cause>) {
    match v.get(key).filter(|s| !s.is_null()) {
        Some(s) => out.extend(label_selector_causes(s, &format!("{path}.{key}"))),
        None if required_here => out.push(required(format!("{path}.{key}"), "")),
        None => {}
    }
}

// ---- webhook configurations -----------------------------------------------------------------

/// Upstream's `validationOptions` of a webhook configuration.
struct Options {
    require_no_side_effects: bool,
    require_known_review_version: bool,
    require_unique_names: bool,
    ignore_match_conditions: bool,
}

const REVIEW_VERSIONS: &[&str] = &["v1", "v1beta1"];

fn webhook_configuration(obj: &Value, old: Option<&Value>, mutating: bool, out: &mut Vec<Cause>) {
    let hooks = items(obj, "webhooks");
    let opts = match old {
        None => Options {
            require_no_side_effects: true,
            require_known_review_version: true,
            require_unique_names: true,
            ignore_match_conditions: false,
        },
        Some(old) => {
            let old_hooks = items(old, "webhooks");
            let mut names = HashSet::new();
            Options {
                require_no_side_effects: old_hooks
                    .iter()
                    .all(|h| matches!(opt_str(h, "sideEffects"), Some("None" | "NoneOnDryRun"))),
                require_known_review_version: old_hooks.iter().all(|h| {
                    let v = items(h, "admissionReviewVersions");
                    v.is_empty()
                        || v.iter()
                            .any(|x| REVIEW_VERSIONS.contains(&x.as_str().unwrap_or("")))
                }),
                require_unique_names: old_hooks.iter().all(|h| names.insert(str_of(h, "name"))),
                ignore_match_conditions: old_hooks.len() == hooks.len()
                    && old_hooks
                        .iter()
                        .zip(hooks)
                        .all(|(o, n)| o.get("matchConditions") == n.get("matchConditions")),
            }
        }
    };
    let mut names = HashSet::new();
    for (i, hook) in hooks.iter().enumerate() {
        let path = format!("webhooks[{i}]");
        webhook(hook, &path, mutating, &opts, out);
        review_versions(
            items(hook, "admissionReviewVersions"),
            &format!("{path}.admissionReviewVersions"),
            opts.require_known_review_version,
            out,
        );
        let name = str_of(hook, "name");
        if opts.require_unique_names && !name.is_empty() && !names.insert(name) {
            out.push(duplicate(format!("{path}.name"), &q(name)));
        }
    }
}

/// `IsFullyQualifiedName`.
fn fully_qualified(name: &str, path: &str, out: &mut Vec<Cause>) {
    if name.is_empty() {
        out.push(required(path, ""));
        return;
    }
    let problems = dns_problems(NameRule::Subdomain, name);
    if !problems.is_empty() {
        out.push(invalid(path, &q(name), &problems.join(",")));
    } else if name.split('.').count() < 3 {
        out.push(invalid(
            path,
            &q(name),
            "should be a domain with at least three segments separated by dots",
        ));
    }
}

fn webhook(hook: &Value, path: &str, mutating: bool, opts: &Options, out: &mut Vec<Cause>) {
    fully_qualified(str_of(hook, "name"), &format!("{path}.name"), out);
    for (i, r) in items(hook, "rules").iter().enumerate() {
        rule_with_operations(r, &format!("{path}.rules[{i}]"), out);
    }
    if let Some(fp) = opt_str(hook, "failurePolicy")
        && !["Fail", "Ignore"].contains(&fp)
    {
        out.push(not_supported(
            format!("{path}.failurePolicy"),
            &q(fp),
            &["Fail", "Ignore"],
        ));
    }
    if let Some(mp) = opt_str(hook, "matchPolicy")
        && !["Equivalent", "Exact"].contains(&mp)
    {
        out.push(not_supported(
            format!("{path}.matchPolicy"),
            &q(mp),
            &["Equivalent", "Exact"],
        ));
    }
    let allowed: &[&str] = if opts.require_no_side_effects {
        &["None", "NoneOnDryRun"]
    } else {
        &["None", "NoneOnDryRun", "Some", "Unknown"]
    };
    match opt_str(hook, "sideEffects") {
        None => out.push(required(
            format!("{path}.sideEffects"),
            &format!("must specify one of {}", allowed.join(", ")),
        )),
        Some(se) if !allowed.contains(&se) => {
            out.push(not_supported(
                format!("{path}.sideEffects"),
                &q(se),
                allowed,
            ));
        }
        Some(_) => {}
    }
    if let Some(t) = hook.get("timeoutSeconds").and_then(Value::as_i64)
        && !(1..=30).contains(&t)
    {
        out.push(invalid(
            format!("{path}.timeoutSeconds"),
            &t.to_string(),
            "the timeout value must be between 1 and 30 seconds",
        ));
    }
    selector(hook, "namespaceSelector", path, false, out);
    selector(hook, "objectSelector", path, false, out);
    if mutating
        && let Some(rp) = opt_str(hook, "reinvocationPolicy")
        && !["IfNeeded", "Never"].contains(&rp)
    {
        out.push(not_supported(
            format!("{path}.reinvocationPolicy"),
            &q(rp),
            &["IfNeeded", "Never"],
        ));
    }
    let cc = hook.get("clientConfig").unwrap_or(&Value::Null);
    let url = cc.get("url").and_then(Value::as_str);
    let service = cc.get("service").filter(|s| s.is_object());
    match (url, service) {
        (Some(u), None) => webhook_url(u, &format!("{path}.clientConfig.url"), out),
        (None, Some(s)) => webhook_service(s, &format!("{path}.clientConfig.service"), out),
        _ => out.push(required(
            format!("{path}.clientConfig"),
            "exactly one of url or service is required",
        )),
    }
    if !opts.ignore_match_conditions {
        match_conditions(
            items(hook, "matchConditions"),
            false,
            &format!("{path}.matchConditions"),
            out,
        );
    }
}

fn review_versions(versions: &[Value], path: &str, require_known: bool, out: &mut Vec<Cause>) {
    if versions.is_empty() {
        out.push(required(
            path,
            &format!("must specify one of {}", REVIEW_VERSIONS.join(", ")),
        ));
        return;
    }
    let mut seen = HashSet::new();
    let mut known = false;
    for (i, v) in versions.iter().enumerate() {
        let v = v.as_str().unwrap_or("");
        let at = format!("{path}[{i}]");
        if !seen.insert(v) {
            out.push(invalid(&at, &q(v), "duplicate version"));
            continue;
        }
        for m in dns_problems(NameRule::Dns1035, v) {
            out.push(invalid(&at, &q(v), &m));
        }
        known |= REVIEW_VERSIONS.contains(&v);
    }
    if require_known && !known {
        out.push(invalid(
            path,
            &go_list("string", versions),
            &format!(
                "must include at least one of {}",
                REVIEW_VERSIONS.join(", ")
            ),
        ));
    }
}

/// `webhook.ValidateWebhookURL` with https required.
fn webhook_url(u: &str, path: &str, out: &mut Vec<Cause>) {
    const FORM: &str = "; desired format: https://host[/path]";
    // Go's url.Parse accepts relative references: a parse failure here is rare.
    let parsed = match url::Url::parse(u) {
        Ok(p) => p,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            out.push(invalid(
                path,
                &q(""),
                &format!("'https' is the only allowed URL scheme{FORM}"),
            ));
            out.push(invalid(
                path,
                &q(""),
                &format!("host must be provided{FORM}"),
            ));
            return;
        }
        Err(e) => {
            out.push(required(
                path,
                &format!("url must be a valid URL: {e}{FORM}"),
            ));
            return;
        }
    };
    if parsed.scheme() != "https" {
        out.push(invalid(
            path,
            &q(parsed.scheme()),
            &format!("'https' is the only allowed URL scheme{FORM}"),
        ));
    }
    let host = parsed.host_str().unwrap_or("");
    if host.is_empty() {
        out.push(invalid(
            path,
            &q(""),
            &format!("host must be provided{FORM}"),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let user = match parsed.password() {
            Some(p) => format!("{}:{p}", parsed.username()),
            None => parsed.username().to_string(),
        };
        out.push(invalid(
            path,
            &q(&user),
            "user information is not permitted in the URL",
        ));
    }
    if let Some(f) = parsed.fragment().filter(|f| !f.is_empty()) {
        out.push(invalid(
            path,
            &q(f),
            "fragments are not permitted in the URL",
        ));
    }
    if let Some(query) = parsed.query().filter(|x| !x.is_empty()) {
        out.push(invalid(
            path,
            &q(query),
            "query parameters are not permitted in the URL",
        ));
    }
}

/// `webhook.ValidateWebhookService` (port 443 when absent, as upstream defaults it).
fn webhook_service(s: &Value, path: &str, out: &mut Vec<Cause>) {
    if str_of(s, "name").is_empty() {
        out.push(required(format!("{path}.name"), "service name is required"));
    }
    if str_of(s, "namespace").is_empty() {
        out.push(required(
            format!("{path}.namespace"),
            "service namespace is required",
        ));
    }
    let port = s.get("port").and_then(Value::as_i64).unwrap_or(443);
    let problems = port_num_problems(port);
    if !problems.is_empty() {
        out.push(invalid(
            format!("{path}.port"),
            &port.to_string(),
            &format!("port is not valid: {}", problems.join(", ")),
        ));
    }
    let Some(p) = opt_str(s, "path") else { return };
    if p.is_empty() || p == "/" {
        return;
    }
    let at = format!("{path}.path");
    if p == "//" {
        out.push(invalid(&at, &q(p), "segment[0] may not be empty"));
        return;
    }
    if !p.starts_with('/') {
        out.push(invalid(&at, &q(p), "must start with a '/'"));
    }
    let rest = p.get(1..).unwrap_or("");
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    for (i, step) in rest.split('/').enumerate() {
        if step.is_empty() {
            out.push(invalid(
                &at,
                &q(p),
                &format!("segment[{i}] may not be empty"),
            ));
            continue;
        }
        for m in dns_problems(NameRule::Subdomain, step) {
            out.push(invalid(&at, &q(p), &format!("segment[{i}]: {m}")));
        }
    }
}

fn match_conditions(conditions: &[Value], has_params: bool, path: &str, out: &mut Vec<Cause>) {
    let mut names = HashSet::new();
    for (i, c) in conditions.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let expression = str_of(c, "expression").trim();
        if expression.is_empty() {
            out.push(required(format!("{at}.expression"), ""));
        } else if let Some(e) =
            compile_error(expression, ExpressionKind::MatchCondition, has_params, &[])
        {
            out.push(invalid(format!("{at}.expression"), &q(expression), &e));
        }
        let name = str_of(c, "name");
        if name.is_empty() {
            out.push(required(format!("{at}.name"), ""));
        } else {
            for m in qualified_name_problems(name) {
                out.push(invalid(format!("{at}.name"), &q(name), &m));
            }
            if !names.insert(name) {
                out.push(duplicate(format!("{at}.name"), &q(name)));
            }
        }
    }
}

// ---- policies and bindings ------------------------------------------------------------------

fn match_resources(m: &Value, path: &str, out: &mut Vec<Cause>) {
    if let Some(mp) = opt_str(m, "matchPolicy")
        && !["Equivalent", "Exact"].contains(&mp)
    {
        out.push(not_supported(
            format!("{path}.matchPolicy"),
            &q(mp),
            &["Equivalent", "Exact"],
        ));
    }
    selector(m, "namespaceSelector", path, false, out);
    selector(m, "objectSelector", path, false, out);
    for key in ["resourceRules", "excludeResourceRules"] {
        for (i, r) in items(m, key).iter().enumerate() {
            named_rule(r, &format!("{path}.{key}[{i}]"), out);
        }
    }
}

fn param_kind(k: &Value, path: &str, out: &mut Vec<Cause>) {
    let api_version = str_of(k, "apiVersion");
    let at = format!("{path}.apiVersion");
    if api_version.is_empty() {
        out.push(required(&at, ""));
    } else if api_version.matches('/').count() > 1 {
        out.push(invalid(
            &at,
            &q(api_version),
            &format!("unexpected GroupVersion string: {api_version}"),
        ));
    } else if api_version != "/" {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        if !group.is_empty() {
            let problems = dns_problems(NameRule::Subdomain, group);
            if !problems.is_empty() {
                out.push(invalid(&at, &q(group), &problems.join(",")));
            }
        }
        if version.is_empty() {
            out.push(invalid(&at, &q(api_version), "version must be specified"));
        } else {
            let problems = dns_problems(NameRule::Dns1035, version);
            if !problems.is_empty() {
                out.push(invalid(&at, &q(version), &problems.join(",")));
            }
        }
    }
    let kind = str_of(k, "kind");
    if kind.is_empty() {
        out.push(required(format!("{path}.kind"), ""));
    } else {
        let problems = dns_problems(NameRule::Dns1035, &kind.to_lowercase());
        if !problems.is_empty() {
            out.push(invalid(
                format!("{path}.kind"),
                &q(kind),
                &format!(
                    "may have mixed case, but should otherwise match: {}",
                    problems.join(",")
                ),
            ));
        }
    }
}

/// `isCELIdentifier`.
fn is_cel_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !crate::crd::cel::RESERVED.contains(&name)
}

fn policy(obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let path = "spec";
    if let Some(fp) = opt_str(spec, "failurePolicy")
        && !["Fail", "Ignore"].contains(&fp)
    {
        out.push(not_supported(
            format!("{path}.failurePolicy"),
            &q(fp),
            &["Fail", "Ignore"],
        ));
    }
    let has_params = match spec.get("paramKind").filter(|k| !k.is_null()) {
        Some(k) => {
            param_kind(k, &format!("{path}.paramKind"), out);
            true
        }
        None => false,
    };
    match spec.get("matchConstraints").filter(|m| !m.is_null()) {
        None => out.push(required(format!("{path}.matchConstraints"), "")),
        Some(m) => {
            match_resources(m, &format!("{path}.matchConstraints"), out);
            if items(m, "resourceRules").is_empty() {
                out.push(required(
                    format!("{path}.matchConstraints.resourceRules"),
                    "",
                ));
            }
        }
    }
    // Unchanged match conditions (and paramKind) are not checked again on update.
    let ignore_conditions = old.is_some_and(|o| {
        let os = o.get("spec").unwrap_or(&Value::Null);
        os.get("paramKind") == spec.get("paramKind")
            && os.get("matchConditions") == spec.get("matchConditions")
    });
    if !ignore_conditions {
        match_conditions(
            items(spec, "matchConditions"),
            has_params,
            &format!("{path}.matchConditions"),
            out,
        );
    }
    let mut variables: Vec<&str> = Vec::new();
    for (i, v) in items(spec, "variables").iter().enumerate() {
        let at = format!("{path}.variables[{i}]");
        let name = str_of(v, "name");
        if name.trim().is_empty() {
            out.push(required(format!("{at}.name"), "name is not specified"));
        } else if !is_cel_identifier(name) {
            out.push(invalid(
                format!("{at}.name"),
                &q(name),
                "name is not a valid CEL identifier",
            ));
        }
        let expression = str_of(v, "expression");
        if expression.trim().is_empty() {
            out.push(required(
                format!("{at}.expression"),
                "expression is not specified",
            ));
        } else if let Some(e) = compile_error(
            expression,
            ExpressionKind::Validation,
            has_params,
            &variables,
        ) {
            out.push(invalid(format!("{at}.expression"), &q(expression), &e));
        }
        variables.push(name);
    }
    let validations = items(spec, "validations");
    let annotations = items(spec, "auditAnnotations");
    if validations.is_empty() && annotations.is_empty() {
        let detail = "validations or auditAnnotations must contain at least one item";
        out.push(required(format!("{path}.validations"), detail));
        out.push(required(format!("{path}.auditAnnotations"), detail));
        return;
    }
    for (i, v) in validations.iter().enumerate() {
        validation(
            v,
            &format!("{path}.validations[{i}]"),
            has_params,
            &variables,
            out,
        );
    }
    if annotations.len() > 20 {
        out.push(invalid(
            format!("{path}.auditAnnotations"),
            "[]admissionregistration.AuditAnnotation{...}",
            "must not have more than 20 auditAnnotations",
        ));
    }
    let name = crate::rest::object_meta_str(obj, "name");
    let mut keys = HashSet::new();
    for (i, a) in annotations.iter().enumerate() {
        let at = format!("{path}.auditAnnotations[{i}]");
        let key = str_of(a, "key");
        if name.is_empty() {
            out.push(invalid(
                format!("{at}.key"),
                &q(key),
                "requires metadata.name be non-empty",
            ));
        } else {
            let full = format!("{name}/{key}");
            for m in qualified_name_problems(&full) {
                out.push(invalid(format!("{at}.key"), &q(&full), &m));
            }
        }
        let value = str_of(a, "valueExpression");
        let trimmed = value.trim();
        if trimmed.is_empty() {
            out.push(required(
                format!("{at}.valueExpression"),
                "valueExpression is not specified",
            ));
        } else if trimmed.len() > 5 * 1024 {
            out.push(required(
                format!("{at}.valueExpression"),
                "must not exceed 5120 bytes in length",
            ));
        } else if let Some(e) =
            compile_error(trimmed, ExpressionKind::Validation, has_params, &variables)
        {
            out.push(invalid(format!("{at}.valueExpression"), &q(value), &e));
        }
        if !keys.insert(key) {
            out.push(duplicate(format!("{at}.key"), &q(key)));
        }
    }
}

fn validation(v: &Value, path: &str, has_params: bool, variables: &[&str], out: &mut Vec<Cause>) {
    let expression = str_of(v, "expression");
    if expression.trim().is_empty() {
        out.push(required(
            format!("{path}.expression"),
            "expression is not specified",
        ));
    } else if let Some(e) = compile_error(
        expression,
        ExpressionKind::Validation,
        has_params,
        variables,
    ) {
        out.push(invalid(format!("{path}.expression"), &q(expression), &e));
    }
    let message_expression = str_of(v, "messageExpression");
    if !message_expression.is_empty() && message_expression.trim().is_empty() {
        out.push(invalid(
            format!("{path}.messageExpression"),
            &q(message_expression),
            "must be non-empty if specified",
        ));
    } else if !message_expression.trim().is_empty()
        && let Some(e) = compile_error(
            message_expression,
            ExpressionKind::Message,
            has_params,
            variables,
        )
    {
        out.push(invalid(
            format!("{path}.messageExpression"),
            &q(message_expression),
            &e,
        ));
    }
    let message = str_of(v, "message");
    if !message.is_empty() && message.trim().is_empty() {
        out.push(invalid(
            format!("{path}.message"),
            &q(message),
            "message must be non-empty if specified",
        ));
    } else if message.trim().contains(['\n', '\r']) {
        out.push(invalid(
            format!("{path}.message"),
            &q(message),
            "message must not contain line breaks",
        ));
    }
    if let Some(reason) = opt_str(v, "reason") {
        let supported = ["Forbidden", "Invalid", "RequestEntityTooLarge"];
        if !supported.contains(&reason) {
            out.push(not_supported(
                format!("{path}.reason"),
                &q(reason),
                &supported,
            ));
        }
    }
}

fn binding(obj: &Value, out: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let path = "spec";
    let policy_name = str_of(spec, "policyName");
    if policy_name.is_empty() {
        out.push(required(format!("{path}.policyName"), ""));
    } else {
        for m in dns_problems(NameRule::Subdomain, policy_name) {
            out.push(invalid(format!("{path}.policyName"), &q(policy_name), &m));
        }
    }
    if let Some(pr) = spec.get("paramRef").filter(|p| !p.is_null()) {
        param_ref(pr, &format!("{path}.paramRef"), out);
    }
    if let Some(m) = spec.get("matchResources").filter(|m| !m.is_null()) {
        // Upstream's path has this typo.
        match_resources(m, &format!("{path}.matchResouces"), out);
    }
    validation_actions(
        items(spec, "validationActions"),
        &format!("{path}.validationActions"),
        out,
    );
}

fn param_ref(pr: &Value, path: &str, out: &mut Vec<Cause>) {
    let name = str_of(pr, "name");
    let selector = pr.get("selector").filter(|s| !s.is_null());
    if !name.is_empty() {
        for m in validate_name(NameRule::PathSegment, name) {
            out.push(invalid(format!("{path}.name"), &q(name), &m));
        }
        if selector.is_some() {
            out.push(forbidden(
                format!("{path}.name"),
                "name and selector are mutually exclusive",
            ));
        }
    }
    if let Some(s) = selector {
        out.extend(label_selector_causes(s, &format!("{path}.selector")));
        if !name.is_empty() {
            out.push(forbidden(
                format!("{path}.selector"),
                "name and selector are mutually exclusive",
            ));
        }
    }
    if name.is_empty() && selector.is_none() {
        out.push(required(path, "one of name or selector must be specified"));
    }
    match opt_str(pr, "parameterNotFoundAction").filter(|a| !a.is_empty()) {
        None => out.push(required(format!("{path}.parameterNotFoundAction"), "")),
        Some("Deny" | "Allow") => {}
        // Upstream shows the pointer it was given.
        Some(a) => out.push(not_supported(
            format!("{path}.parameterNotFoundAction"),
            &q(a),
            &["Deny", "Allow"],
        )),
    }
}

fn validation_actions(actions: &[Value], path: &str, out: &mut Vec<Cause>) {
    let mut seen = HashSet::new();
    for (i, a) in actions.iter().enumerate() {
        let a = a.as_str().unwrap_or("");
        let at = format!("{path}[{i}]");
        if !["Audit", "Deny", "Warn"].contains(&a) {
            out.push(not_supported(&at, &q(a), &["Audit", "Deny", "Warn"]));
        }
        if !seen.insert(a) {
            out.push(duplicate(&at, &q(a)));
        }
    }
    if seen.contains("Deny") && seen.contains("Warn") {
        out.push(invalid(
            path,
            &go_list("admissionregistration.ValidationAction", actions),
            "must not contain both Deny and Warn (repeating the same validation failure \
             information in the API response and headers serves no purpose)",
        ));
    }
    if seen.is_empty() {
        out.push(required(path, "at least one validation action is required"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(kind: &str, obj: Value) -> Vec<String> {
        let info = crate::registry::REGISTRY
            .groups
            .iter()
            .flat_map(|g| g.resources.iter())
            .find(|r| r.kind == kind)
            .expect("registered");
        validate(info, &obj, None)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    fn hook(extra: Value) -> Value {
        let mut h = json!({
            "name": "v.example.com",
            "clientConfig": {"url": "https://example.com/x"},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"]}],
        });
        if let (Some(h), Some(e)) = (h.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                h.insert(k.clone(), v.clone());
            }
        }
        json!({"metadata": {"name": "c"}, "webhooks": [h]})
    }

    #[test]
    fn a_typical_webhook_configuration_is_valid() {
        assert!(causes("ValidatingWebhookConfiguration", hook(json!({}))).is_empty());
        let svc = hook(
            json!({"clientConfig": {"service": {"namespace": "n", "name": "s",
            "path": "/validate"}}, "timeoutSeconds": 5, "failurePolicy": "Ignore",
            "matchConditions": [{"name": "not-kube-system",
                "expression": "request.namespace != 'kube-system'"}]}),
        );
        assert!(causes("MutatingWebhookConfiguration", svc).is_empty());
    }

    #[test]
    fn webhook_errors_are_upstreams() {
        let bad = hook(json!({
            "name": "short",
            "clientConfig": {"url": "http://u@example.com/x?a=b#f"},
            "sideEffects": "Some",
            "timeoutSeconds": 31,
            "admissionReviewVersions": ["v2"],
            "rules": [{"operations": ["*", "CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["*", "pods"], "scope": "All"}],
            "matchConditions": [{"name": "a", "expression": "objekt == 1"},
                                {"name": "a", "expression": "true"}],
        }));
        assert_eq!(
            causes("ValidatingWebhookConfiguration", bad),
            vec![
                "webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments separated by dots",
                "webhooks[0].rules[0].operations: Invalid value: []admissionregistration.OperationType{\"*\", \"CREATE\"}: if '*' is present, must not specify other operations",
                "webhooks[0].rules[0].resources: Invalid value: []string{\"*\", \"pods\"}: if '*' is present, must not specify other resources without subresources",
                "webhooks[0].rules[0].scope: Unsupported value: \"All\": supported values: \"*\", \"Cluster\", \"Namespaced\"",
                "webhooks[0].sideEffects: Unsupported value: \"Some\": supported values: \"None\", \"NoneOnDryRun\"",
                "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
                "webhooks[0].clientConfig.url: Invalid value: \"http\": 'https' is the only allowed URL scheme; desired format: https://host[/path]",
                "webhooks[0].clientConfig.url: Invalid value: \"u\": user information is not permitted in the URL",
                "webhooks[0].clientConfig.url: Invalid value: \"f\": fragments are not permitted in the URL",
                "webhooks[0].clientConfig.url: Invalid value: \"a=b\": query parameters are not permitted in the URL",
                "webhooks[0].matchConditions[0].expression: Invalid value: \"objekt == 1\": compilation failed: ERROR: <input>:1:1: undeclared reference to 'objekt' (in container '')\n | objekt == 1\n | ^",
                "webhooks[0].matchConditions[1].name: Duplicate value: \"a\"",
                "webhooks[0].admissionReviewVersions: Invalid value: []string{\"v2\"}: must include at least one of v1, v1beta1",
            ]
        );
        let both = hook(json!({"clientConfig": {}}));
        assert_eq!(
            causes("ValidatingWebhookConfiguration", both),
            vec![
                "webhooks[0].clientConfig: Required value: exactly one of url or service is required"
            ]
        );
    }

    #[test]
    fn policies_and_bindings_are_validated_as_upstream() {
        let good = json!({"metadata": {"name": "p"}, "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
            "variables": [{"name": "r", "expression": "object.spec.replicas"}],
            "validations": [{"expression": "variables.r <= int(params.data.max)",
                "messageExpression": "'too many: ' + string(variables.r)"}],
        }});
        assert!(causes("ValidatingAdmissionPolicy", good).is_empty());
        let bad = json!({"metadata": {"name": "p"}, "spec": {
            "failurePolicy": "Never",
            "variables": [{"name": "1x", "expression": "object.x"}],
            "validations": [{"expression": "params.x", "reason": "Teapot", "message": "a\nb"}],
        }});
        assert_eq!(
            causes("ValidatingAdmissionPolicy", bad),
            vec![
                "spec.failurePolicy: Unsupported value: \"Never\": supported values: \"Fail\", \"Ignore\"",
                "spec.matchConstraints: Required value",
                "spec.variables[0].name: Invalid value: \"1x\": name is not a valid CEL identifier",
                "spec.validations[0].expression: Invalid value: \"params.x\": compilation failed: ERROR: <input>:1:1: undeclared reference to 'params' (in container '')\n | params.x\n | ^",
                "spec.validations[0].message: Invalid value: \"a\\nb\": message must not contain line breaks",
                "spec.validations[0].reason: Unsupported value: \"Teapot\": supported values: \"Forbidden\", \"Invalid\", \"RequestEntityTooLarge\"",
            ]
        );
        let empty = json!({"metadata": {"name": "p"}, "spec": {"matchConstraints":
            {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["*"],
                "resources": ["pods"]}]}}});
        assert_eq!(
            causes("ValidatingAdmissionPolicy", empty),
            vec![
                "spec.validations: Required value: validations or auditAnnotations must contain at least one item",
                "spec.auditAnnotations: Required value: validations or auditAnnotations must contain at least one item",
            ]
        );
        let binding = json!({"metadata": {"name": "b"}, "spec": {
            "paramRef": {"name": "x", "selector": {}},
            "validationActions": ["Deny", "Warn"],
        }});
        assert_eq!(
            causes("ValidatingAdmissionPolicyBinding", binding),
            vec![
                "spec.policyName: Required value",
                "spec.paramRef.name: Forbidden: name and selector are mutually exclusive",
                "spec.paramRef.selector: Forbidden: name and selector are mutually exclusive",
                "spec.paramRef.parameterNotFoundAction: Required value",
                "spec.validationActions: Invalid value: []admissionregistration.ValidationAction{\"Deny\", \"Warn\"}: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
            ]
        );
        let ok = json!({"metadata": {"name": "b"}, "spec": {"policyName": "p",
            "validationActions": ["Deny"]}});
        assert!(causes("ValidatingAdmissionPolicyBinding", ok).is_empty());
    }

    #[test]
    fn policies_may_use_the_authorizer_except_in_message_expressions() {
        let check = "authorizer.group('').resource('secrets').namespace('ns').check('get')";
        let policy = |message_expression: &str| {
            json!({"metadata": {"name": "p"}, "spec": {
                "matchConstraints": {"resourceRules": [{"apiGroups": [""],
                    "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
                "matchConditions": [{"name": "m",
                    "expression": "authorizer.path('/healthz').check('get').allowed()"}],
                "variables": [{"name": "d", "expression": check}],
                "validations": [{
                    "expression": "variables.d.allowed() && \
                        authorizer.requestResource.check('create').allowed() && \
                        authorizer.serviceAccount('ns', 'sa').group('apps')\
                        .resource('deployments').check('list').allowed()",
                    "messageExpression": message_expression}],
                "auditAnnotations": [{"key": "k", "valueExpression":
                    format!("{check}.reason()")}],
            }})
        };
        assert!(causes("ValidatingAdmissionPolicy", policy("'denied'")).is_empty());
        assert_eq!(
            causes(
                "ValidatingAdmissionPolicy",
                policy("authorizer.path('/x').check('get').reason()")
            ),
            vec![
                "spec.validations[0].messageExpression: Invalid value: \"authorizer.path('/x').check('get').reason()\": compilation failed: ERROR: <input>:1:1: undeclared reference to 'authorizer' (in container '')\n | authorizer.path('/x').check('get').reason()\n | ^"
            ]
        );
    }
}
