//! apps/v1 and batch/v1 as upstream v1.33 validates them (`pkg/apis/apps/validation`,
//! `pkg/apis/batch/validation` and the strategies' `ValidateUpdate`): Deployment, ReplicaSet,
//! StatefulSet, DaemonSet, Job and CronJob on create and update, with upstream's field paths,
//! reasons and messages. Values in `Invalid value:` are written as Go's `field.Error` shows them
//! (`%q` for strings, `%#v` for maps, selectors and `IntOrString`s). The objects are defaulted
//! (`crate::defaults`) before they get here.
//!
//! The pod template's `spec` itself (containers, volumes, ...) is core/v1's
//! `ValidatePodTemplateSpec` (`validation::core`), wired in at the marked call site.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::Cause;
use crate::validation::{
    NameRule, duplicate, forbidden, invalid, label_selector_causes, not_supported, q, required,
    validate_name,
};

const NULL: Value = Value::Null;

/// Upstream's `maxParallelismForIndexedJob` (and the completions limit with it).
const MAX_INDEXED_PARALLELISM: i64 = 100_000;
/// CronJob names leave room for the 11-character suffix of their jobs' names.
const CRONJOB_NAME_MAX: usize = 52;
/// Upstream's `completionsSoftLimit`: above it, per-index backoff has tighter limits.
const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
/// Upstream's `parallelismLimitForHighCompletions` and `maxFailedIndexesLimitForHighCompletions`.
const HIGH_COMPLETIONS_LIMIT: i64 = 10_000;

/// The causes of `obj` (with the stored `old` on update).
pub(super) fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Errs::default();
    let spec = obj.get("spec").unwrap_or(&NULL);
    let old_spec = old.map(|o| o.get("spec").unwrap_or(&NULL));
    match (info.group, info.kind) {
        ("apps", "Deployment") => {
            replica_set_like(&mut e, spec, "deployment", true);
            if let Some(old_spec) = old_spec {
                immutable(
                    &mut e,
                    spec,
                    old_spec,
                    "selector",
                    "spec.selector",
                    show_selector,
                );
            }
        }
        ("apps", "ReplicaSet") => {
            replica_set_like(&mut e, spec, "deployment", false);
            if let Some(old_spec) = old_spec {
                immutable(
                    &mut e,
                    spec,
                    old_spec,
                    "selector",
                    "spec.selector",
                    show_selector,
                );
            }
        }
        ("apps", "StatefulSet") => {
            stateful_set(&mut e, spec);
            if let Some(old_spec) = old_spec {
                stateful_set_update(&mut e, spec, old_spec);
            }
        }
        ("apps", "DaemonSet") => {
            daemon_set(&mut e, spec);
            if let Some(old_spec) = old_spec {
                immutable(
                    &mut e,
                    spec,
                    old_spec,
                    "selector",
                    "spec.selector",
                    show_selector,
                );
            }
        }
        ("batch", "Job") => job(&mut e, obj, old),
        ("batch", "CronJob") => cron_job(&mut e, obj, old),
        ("policy", "PodDisruptionBudget") => pod_disruption_budget(&mut e, spec),
        ("autoscaling", "HorizontalPodAutoscaler") => horizontal_pod_autoscaler(&mut e, spec),
        _ => {}
    }
    e.0
}

// ---------------------------------------------------------------------------------------------
// causes and Go's rendering of values

#[derive(Default)]
struct Errs(Vec<Cause>);

impl Errs {
    fn invalid(&mut self, field: &str, shown: &str, detail: &str) {
        self.0.push(invalid(field, shown, detail));
    }

    fn required(&mut self, field: &str, detail: &str) {
        self.0.push(required(field, detail));
    }

    fn forbidden(&mut self, field: &str, detail: &str) {
        self.0.push(forbidden(field, detail));
    }

    fn not_supported(&mut self, field: &str, shown: &str, valid: &[&str]) {
        self.0.push(not_supported(field, shown, valid));
    }

    /// `ValidateNonnegativeField` of an integer field, when set.
    fn nonnegative(&mut self, v: &Value, key: &str, field: &str) {
        if let Some(n) = int(v, key)
            && n < 0
        {
            self.invalid(field, &n.to_string(), "must be greater than or equal to 0");
        }
    }
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn string<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn set(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|f| !f.is_null())
}

/// A string map (labels, `matchLabels`), `None` when absent.
fn string_map(v: Option<&Value>) -> Option<BTreeMap<String, String>> {
    v.and_then(Value::as_object).map(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect()
    })
}

/// A `map[string]string` as Go's `%#v` shows it (keys sorted).
fn show_map(m: Option<&BTreeMap<String, String>>) -> String {
    match m {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{}", q(k), q(v)))
                .collect();
            format!("map[string]string{{{}}}", items.join(", "))
        }
    }
}

pub(super) fn show_strings(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => "[]string(nil)".into(),
        Some(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|s| q(s.as_str().unwrap_or_default()))
                .collect();
            format!("[]string{{{}}}", items.join(", "))
        }
    }
}

/// A `metav1.LabelSelector` as Go's `%#v` shows it.
pub(super) fn show_selector(sel: &Value) -> String {
    if sel.is_null() {
        return "null".into();
    }
    let labels = string_map(sel.get("matchLabels"));
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|r| {
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        q(string(r, "key").unwrap_or_default()),
                        q(string(r, "operator").unwrap_or_default()),
                        show_strings(r.get("values")),
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        show_map(labels.as_ref())
    )
}

/// An `intstr.IntOrString` as Go's `%#v` shows it.
fn show_int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => format!("intstr.IntOrString{{Type:1, IntVal:0, StrVal:{}}}", q(s)),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        ),
    }
}

/// A JSON value as a stand-in for a Go struct upstream prints with `%#v` (a pod template).
fn show_json(v: &Value) -> String {
    v.to_string()
}

/// `ValidateImmutableField` of `spec.<key>`.
fn immutable(
    e: &mut Errs,
    spec: &Value,
    old_spec: &Value,
    key: &str,
    field: &str,
    show: fn(&Value) -> String,
) {
    let new = spec.get(key).unwrap_or(&NULL);
    let old = old_spec.get(key).unwrap_or(&NULL);
    if new != old {
        e.invalid(field, &show(new), "field is immutable");
    }
}

// ---------------------------------------------------------------------------------------------
// label selectors

/// `ValidateLabelSelector` (values strict) of another group's selector at `field`
/// (NetworkPolicy peers, CSIStorageCapacity's `nodeTopology`).
/// `ValidateLabelSelector` (values strict, as the workload strategies ask); true when the
/// selector also converts to a `labels.Selector` (`LabelSelectorAsSelector` would not fail).
fn label_selector(e: &mut Errs, sel: &Value, field: &str) -> bool {
    let causes = label_selector_causes(sel, field);
    let ok = causes.is_empty();
    e.0.extend(causes);
    ok
}

/// Whether a selector selects nothing in particular (`{}`: everything).
fn selector_is_empty(sel: &Value) -> bool {
    let n = |k: &str| {
        sel.get(k).map_or(0, |v| {
            v.as_object().map_or(0, |m| m.len()) + v.as_array().map_or(0, Vec::len)
        })
    };
    n("matchLabels") + n("matchExpressions") == 0
}

/// Whether a (valid) selector matches `labels`; a null selector matches nothing.
fn selector_matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    if sel.is_null() {
        return false;
    }
    let exact = string_map(sel.get("matchLabels"))
        .unwrap_or_default()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .all(|r| {
            let key = string(r, "key").unwrap_or_default();
            let has = |v: &str| {
                r.get("values")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(v)))
            };
            match (string(r, "operator").unwrap_or_default(), labels.get(key)) {
                ("In", Some(v)) => has(v),
                ("NotIn", Some(v)) => !has(v),
                ("NotIn", None) | ("DoesNotExist", None) | ("Exists", Some(_)) => true,
                _ => false,
            }
        });
    exact && exprs
}

/// The template's labels must be selected (`ValidatePodTemplateSpecForReplicaSet` and its
/// siblings); `{}` selects everything and is not checked.
fn template_matches(e: &mut Errs, sel: &Value, template: &Value, field: &str) {
    if !sel.is_null() && selector_is_empty(sel) {
        return;
    }
    let labels = string_map(template.get("metadata").and_then(|m| m.get("labels")));
    if !selector_matches(sel, &labels.clone().unwrap_or_default()) {
        e.invalid(
            &format!("{field}.metadata.labels"),
            &show_map(labels.as_ref()),
            "`selector` does not match template `labels`",
        );
    }
}

/// The pod template itself: core/v1's `ValidatePodTemplateSpec` (labels, annotations, the pod
/// spec); the workload's own template rules (restart policy, selector match) are checked by
/// the callers.
fn pod_template_spec(e: &mut Errs, template: &Value, field: &str) {
    e.0.extend(super::core::template_spec(Some(template), field, false));
}

/// A template of pods that always restart (ReplicaSets, StatefulSets, DaemonSets):
/// `restartPolicy: Always`, no `activeDeadlineSeconds` (`deadline` words the refusal).
fn always_restarting(e: &mut Errs, template: &Value, deadline: &str) {
    let policy = restart_policy(template);
    if policy != "Always" {
        e.not_supported("spec.template.spec.restartPolicy", &q(policy), &["Always"]);
    }
    if let Some(ads) = template
        .get("spec")
        .and_then(|s| int(s, "activeDeadlineSeconds"))
    {
        e.invalid(
            "spec.template.spec.activeDeadlineSeconds",
            &ads.to_string(),
            deadline,
        );
    }
}

fn restart_policy(template: &Value) -> &str {
    template
        .get("spec")
        .and_then(|s| string(s, "restartPolicy"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// apps/v1

/// `ValidateDeploymentSpec` / `ValidateReplicaSetSpec` (everything but the strategy).
fn replica_set_like(e: &mut Errs, spec: &Value, what: &str, deployment: bool) {
    e.nonnegative(spec, "replicas", "spec.replicas");
    if !deployment {
        e.nonnegative(spec, "minReadySeconds", "spec.minReadySeconds");
    }
    let sel = spec.get("selector").unwrap_or(&NULL);
    let mut parses = true;
    if sel.is_null() {
        e.required("spec.selector", "");
    } else {
        parses = label_selector(e, sel, "spec.selector");
        if selector_is_empty(sel) {
            e.invalid(
                "spec.selector",
                &show_selector(sel),
                &format!("empty selector is invalid for {what}"),
            );
        }
    }
    let template = spec.get("template").unwrap_or(&NULL);
    if parses {
        template_matches(e, sel, template, "spec.template");
        pod_template_spec(e, template, "spec.template");
        always_restarting(
            e,
            template,
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        );
    } else {
        e.invalid(
            "spec.selector",
            &show_selector(sel),
            "invalid label selector",
        );
    }
    if deployment {
        deployment_strategy(e, spec);
        e.nonnegative(spec, "minReadySeconds", "spec.minReadySeconds");
        e.nonnegative(spec, "revisionHistoryLimit", "spec.revisionHistoryLimit");
        if let Some(pds) = int(spec, "progressDeadlineSeconds") {
            e.nonnegative(
                spec,
                "progressDeadlineSeconds",
                "spec.progressDeadlineSeconds",
            );
            if pds <= int(spec, "minReadySeconds").unwrap_or(0) {
                e.invalid(
                    "spec.progressDeadlineSeconds",
                    &pds.to_string(),
                    "must be greater than minReadySeconds",
                );
            }
        }
    }
}

fn is_percent(s: &str) -> bool {
    s.strip_suffix('%')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `getIntOrPercentValue`.
fn int_or_percent_value(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.strip_suffix('%').unwrap_or(s).parse::<i64>().unwrap_or(0),
        other => other.as_i64().unwrap_or(0),
    }
}

/// `ValidatePositiveIntOrPercent`.
fn positive_int_or_percent(e: &mut Errs, v: &Value, field: &str) {
    match v {
        Value::String(s) if !is_percent(s) => e.invalid(
            field,
            &show_int_or_string(v),
            "a valid percent string must be a numeric string followed by an ending '%' \
             (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
        ),
        Value::Number(n) if n.as_i64().unwrap_or(0) < 0 => e.invalid(
            field,
            &n.as_i64().unwrap_or(0).to_string(),
            "must be greater than or equal to 0",
        ),
        _ => {}
    }
}

/// `IsNotMoreThan100Percent`.
fn not_more_than_100_percent(e: &mut Errs, v: &Value, field: &str) {
    if let Value::String(s) = v
        && is_percent(s)
        && int_or_percent_value(v) > 100
    {
        e.invalid(
            field,
            &show_int_or_string(v),
            "must not be greater than 100%",
        );
    }
}

/// `ValidateDeploymentStrategy`.
fn deployment_strategy(e: &mut Errs, spec: &Value) {
    let strategy = spec.get("strategy").unwrap_or(&NULL);
    let ru = strategy.get("rollingUpdate").filter(|v| !v.is_null());
    match string(strategy, "type").unwrap_or_default() {
        "Recreate" => {
            if ru.is_some() {
                e.forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                );
            }
        }
        "RollingUpdate" => match ru {
            None => e.required(
                "spec.strategy.rollingUpdate",
                "this should be defaulted and never be nil",
            ),
            Some(ru) => {
                let unavailable = ru.get("maxUnavailable").unwrap_or(&NULL);
                let surge = ru.get("maxSurge").unwrap_or(&NULL);
                let path = "spec.strategy.rollingUpdate";
                positive_int_or_percent(e, unavailable, &format!("{path}.maxUnavailable"));
                positive_int_or_percent(e, surge, &format!("{path}.maxSurge"));
                if int_or_percent_value(unavailable) == 0 && int_or_percent_value(surge) == 0 {
                    e.invalid(
                        &format!("{path}.maxUnavailable"),
                        &show_int_or_string(unavailable),
                        "may not be 0 when `maxSurge` is 0",
                    );
                }
                not_more_than_100_percent(e, unavailable, &format!("{path}.maxUnavailable"));
            }
        },
        other => e.not_supported(
            "spec.strategy",
            &format!(
                "apps.DeploymentStrategy{{Type:{}, RollingUpdate:(*apps.RollingUpdateDeployment)(nil)}}",
                q(other)
            ),
            &["Recreate", "RollingUpdate"],
        ),
    }
}

/// `ValidateStatefulSetSpec`.
fn stateful_set(e: &mut Errs, spec: &Value) {
    match string(spec, "podManagementPolicy").unwrap_or_default() {
        "" => e.required("spec.podManagementPolicy", ""),
        "OrderedReady" | "Parallel" => {}
        other => e.invalid(
            "spec.podManagementPolicy",
            &q(other),
            "must be 'OrderedReady' or 'Parallel'",
        ),
    }
    let us = spec.get("updateStrategy").unwrap_or(&NULL);
    let ru = us.get("rollingUpdate").filter(|v| !v.is_null());
    match string(us, "type").unwrap_or_default() {
        "" => e.required("spec.updateStrategy", ""),
        "OnDelete" => {
            if let Some(ru) = ru {
                e.invalid(
                    "spec.updateStrategy.rollingUpdate",
                    &format!(
                        "apps.RollingUpdateStatefulSetStrategy{{Partition:{}, MaxUnavailable:(*intstr.IntOrString)(nil)}}",
                        int(ru, "partition").unwrap_or(0)
                    ),
                    "only allowed for updateStrategy 'RollingUpdate'",
                );
            }
        }
        "RollingUpdate" => {
            if let Some(ru) = ru {
                let path = "spec.updateStrategy.rollingUpdate";
                e.nonnegative(ru, "partition", &format!("{path}.partition"));
                if let Some(mu) = ru.get("maxUnavailable").filter(|v| !v.is_null()) {
                    let field = format!("{path}.maxUnavailable");
                    positive_int_or_percent(e, mu, &field);
                    if int_or_percent_value(mu) == 0 {
                        e.invalid(&field, &show_int_or_string(mu), "must be greater than 0");
                    }
                    not_more_than_100_percent(e, mu, &field);
                }
            }
        }
        other => e.invalid(
            "spec.updateStrategy",
            &format!(
                "apps.StatefulSetUpdateStrategy{{Type:{}, RollingUpdate:(*apps.RollingUpdateStatefulSetStrategy)(nil)}}",
                q(other)
            ),
            "must be 'RollingUpdate' or 'OnDelete'",
        ),
    }
    if let Some(p) = spec
        .get("persistentVolumeClaimRetentionPolicy")
        .filter(|v| !v.is_null())
    {
        for key in ["whenDeleted", "whenScaled"] {
            let v = string(p, key).unwrap_or_default();
            if v != "Retain" && v != "Delete" {
                e.not_supported(
                    &format!("spec.persistentVolumeClaimRetentionPolicy.{key}"),
                    &q(v),
                    &["Retain", "Delete"],
                );
            }
        }
    }
    if let Some(o) = spec.get("ordinals").filter(|v| !v.is_null()) {
        e.nonnegative(o, "start", "spec.ordinals.start");
    }
    e.nonnegative(spec, "replicas", "spec.replicas");
    e.nonnegative(spec, "minReadySeconds", "spec.minReadySeconds");
    e.nonnegative(spec, "revisionHistoryLimit", "spec.revisionHistoryLimit");
    if let Some(name) = string(spec, "serviceName").filter(|n| !n.is_empty()) {
        for m in validate_name(NameRule::Dns1035, name) {
            e.invalid("spec.serviceName", &q(name), &m);
        }
    }
    let sel = spec.get("selector").unwrap_or(&NULL);
    let mut parses = true;
    if sel.is_null() {
        e.required("spec.selector", "");
    } else {
        parses = label_selector(e, sel, "spec.selector");
        if selector_is_empty(sel) {
            e.invalid(
                "spec.selector",
                &show_selector(sel),
                "empty selector is invalid for statefulset",
            );
        }
    }
    let template = spec.get("template").unwrap_or(&NULL);
    if parses {
        template_matches(e, sel, template, "spec.template");
        pod_template_spec(e, template, "spec.template");
    } else {
        e.invalid("spec.selector", &show_selector(sel), "");
    }
    always_restarting(e, template, "must not be specified");
    for (i, pvc) in spec
        .get("volumeClaimTemplates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let name = pvc
            .get("metadata")
            .and_then(|m| string(m, "name"))
            .unwrap_or_default();
        let field = format!("spec.volumeClaimTemplates[{i}].metadata.name");
        if name.is_empty() {
            e.required(&field, "name or generateName is required");
        } else {
            for m in validate_name(NameRule::Subdomain, name) {
                e.invalid(&field, &q(name), &m);
            }
        }
    }
}

/// The fields of a StatefulSet's spec an update may change (`ValidateStatefulSetUpdate`).
const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

fn stateful_set_update(e: &mut Errs, spec: &Value, old_spec: &Value) {
    let rest = |s: &Value| -> serde_json::Map<String, Value> {
        s.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, v)| !STATEFULSET_MUTABLE.contains(&k.as_str()) && !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if rest(spec) != rest(old_spec) {
        e.forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', \
             'template', 'updateStrategy', 'revisionHistoryLimit', \
             'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        );
    }
}

/// `ValidateDaemonSetSpec`.
fn daemon_set(e: &mut Errs, spec: &Value) {
    let sel = spec.get("selector").unwrap_or(&NULL);
    let parses = label_selector(e, sel, "spec.selector");
    let template = spec.get("template").unwrap_or(&NULL);
    if parses {
        let labels = string_map(template.get("metadata").and_then(|m| m.get("labels")));
        if !selector_matches(sel, &labels.clone().unwrap_or_default())
            && (sel.is_null() || !selector_is_empty(sel))
        {
            e.invalid(
                "spec.template.metadata.labels",
                &show_map(labels.as_ref()),
                "`selector` does not match template `labels`",
            );
        }
    }
    if !sel.is_null() && selector_is_empty(sel) {
        e.invalid(
            "spec.selector",
            &show_selector(sel),
            "empty selector is invalid for daemonset",
        );
    }
    pod_template_spec(e, template, "spec.template");
    always_restarting(
        e,
        template,
        "activeDeadlineSeconds in DaemonSet is not Supported",
    );
    e.nonnegative(spec, "minReadySeconds", "spec.minReadySeconds");
    e.nonnegative(spec, "templateGeneration", "spec.templateGeneration");
    let us = spec.get("updateStrategy").unwrap_or(&NULL);
    let path = "spec.updateStrategy";
    match string(us, "type").unwrap_or_default() {
        "OnDelete" => {}
        "RollingUpdate" => match us.get("rollingUpdate").filter(|v| !v.is_null()) {
            None => e.required(&format!("{path}.rollingUpdate"), ""),
            Some(ru) => {
                let unavailable = ru.get("maxUnavailable").unwrap_or(&NULL);
                let surge = ru.get("maxSurge").unwrap_or(&NULL);
                let fu = format!("{path}.rollingUpdate.maxUnavailable");
                let fs = format!("{path}.rollingUpdate.maxSurge");
                positive_int_or_percent(e, unavailable, &fu);
                positive_int_or_percent(e, surge, &fs);
                not_more_than_100_percent(e, unavailable, &fu);
                not_more_than_100_percent(e, surge, &fs);
                let has_unavailable = int_or_percent_value(unavailable) != 0;
                let has_surge = int_or_percent_value(surge) != 0;
                if has_unavailable && has_surge {
                    e.invalid(
                        &fs,
                        &show_int_or_string(surge),
                        "may not be set when maxUnavailable is non-zero",
                    );
                } else if !has_unavailable && !has_surge {
                    e.required(&fu, "cannot be 0 when maxSurge is 0");
                }
            }
        },
        other => e.not_supported(
            path,
            &format!(
                "apps.DaemonSetUpdateStrategy{{Type:{}, RollingUpdate:(*apps.RollingUpdateDaemonSet)(nil)}}",
                q(other)
            ),
            &["RollingUpdate", "OnDelete"],
        ),
    }
    e.nonnegative(spec, "revisionHistoryLimit", "spec.revisionHistoryLimit");
}

// ---------------------------------------------------------------------------------------------
// batch/v1

/// `validateJobSpec`: what a Job and a CronJob's job template share; `path` is the spec's.
fn job_spec_common(e: &mut Errs, spec: &Value, path: &str) {
    let f = |k: &str| format!("{path}.{k}");
    e.nonnegative(spec, "parallelism", &f("parallelism"));
    e.nonnegative(spec, "completions", &f("completions"));
    e.nonnegative(spec, "activeDeadlineSeconds", &f("activeDeadlineSeconds"));
    e.nonnegative(spec, "backoffLimit", &f("backoffLimit"));
    e.nonnegative(
        spec,
        "ttlSecondsAfterFinished",
        &f("ttlSecondsAfterFinished"),
    );
    e.nonnegative(spec, "backoffLimitPerIndex", &f("backoffLimitPerIndex"));
    let per_index = int(spec, "backoffLimitPerIndex");
    let max_failed = int(spec, "maxFailedIndexes");
    let completions = int(spec, "completions");
    let parallelism = int(spec, "parallelism");
    if max_failed.is_some() {
        e.nonnegative(spec, "maxFailedIndexes", &f("maxFailedIndexes"));
        if per_index.is_none() {
            e.required(
                &f("backoffLimitPerIndex"),
                "when maxFailedIndexes is specified",
            );
        }
    }
    let mode = string(spec, "completionMode");
    let indexed = mode == Some("Indexed");
    if let Some(mode) = mode {
        if mode != "NonIndexed" && mode != "Indexed" {
            e.not_supported(&f("completionMode"), &q(mode), &["NonIndexed", "Indexed"]);
        }
        if indexed {
            if completions.is_none() {
                e.required(&f("completions"), "when completion mode is Indexed");
            }
            if let Some(p) = parallelism
                && p > MAX_INDEXED_PARALLELISM
            {
                e.invalid(
                    &f("parallelism"),
                    &p.to_string(),
                    "must be less than or equal to 100000 when completion mode is Indexed",
                );
            }
            if let (Some(c), Some(m)) = (completions, max_failed)
                && m > c
            {
                e.invalid(
                    &f("maxFailedIndexes"),
                    &m.to_string(),
                    "must be less than or equal to completions",
                );
            }
            if let Some(m) = max_failed
                && m > MAX_INDEXED_PARALLELISM
            {
                e.invalid(
                    &f("maxFailedIndexes"),
                    &m.to_string(),
                    "must be less than or equal to 100000",
                );
            }
            if completions.is_some_and(|c| c > COMPLETIONS_SOFT_LIMIT) && per_index.is_some() {
                let high =
                    "when completions are above 100000 and used with backoff limit per index";
                if max_failed.is_none() {
                    e.required(
                        &f("maxFailedIndexes"),
                        "must be specified when completions is above 100000",
                    );
                }
                if let Some(p) = parallelism
                    && p > HIGH_COMPLETIONS_LIMIT
                {
                    e.invalid(
                        &f("parallelism"),
                        &p.to_string(),
                        &format!("must be less than or equal to 10000 {high}"),
                    );
                }
                if let Some(m) = max_failed
                    && m > HIGH_COMPLETIONS_LIMIT
                {
                    e.invalid(
                        &f("maxFailedIndexes"),
                        &m.to_string(),
                        &format!("must be less than or equal to 10000 {high}"),
                    );
                }
            }
        }
    }
    if mode.is_none() || mode == Some("NonIndexed") {
        for (v, key) in [
            (per_index, "backoffLimitPerIndex"),
            (max_failed, "maxFailedIndexes"),
        ] {
            if let Some(v) = v {
                e.invalid(&f(key), &v.to_string(), "requires indexed completion mode");
            }
        }
    }
    let pfp = spec.get("podFailurePolicy").filter(|v| !v.is_null());
    if let Some(pfp) = pfp {
        pod_failure_policy(e, spec, pfp, &f("podFailurePolicy"));
    }
    if let Some(sp) = spec.get("successPolicy").filter(|v| !v.is_null()) {
        let rules = sp
            .get("rules")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !indexed {
            e.invalid(
                &f("successPolicy"),
                match sp.get("rules").and_then(Value::as_array) {
                    None => "batch.SuccessPolicy{Rules:[]batch.SuccessPolicyRule(nil)}",
                    Some(r) if r.is_empty() => {
                        "batch.SuccessPolicy{Rules:[]batch.SuccessPolicyRule{}}"
                    }
                    // Upstream prints the rules' pointers; abbreviated.
                    Some(_) => "batch.SuccessPolicy{Rules:[]batch.SuccessPolicyRule{...}}",
                },
                "requires indexed completion mode",
            );
        } else {
            if rules.is_empty() {
                e.required(
                    &f("successPolicy.rules"),
                    "at least one rules must be specified when the successPolicy is specified",
                );
            }
            for (i, rule) in rules.iter().enumerate() {
                if !set(rule, "succeededIndexes") && !set(rule, "succeededCount") {
                    e.required(
                        &format!("{path}.successPolicy.rules[{i}]"),
                        "at least one of succeededCount or succeededIndexes must be specified",
                    );
                }
            }
        }
    }
    if let Some(policy) = string(spec, "podReplacementPolicy") {
        if set(spec, "podFailurePolicy") {
            if policy != "Failed" {
                e.not_supported(&f("podReplacementPolicy"), &q(policy), &["Failed"]);
            }
        } else if policy != "Failed" && policy != "TerminatingOrFailed" {
            e.not_supported(
                &f("podReplacementPolicy"),
                &q(policy),
                &["Failed", "TerminatingOrFailed"],
            );
        }
    }
    let template = spec.get("template").unwrap_or(&NULL);
    pod_template_spec(e, template, &f("template"));
    let policy = restart_policy(template);
    let rp = f("template.spec.restartPolicy");
    if policy == "Always" || policy.is_empty() {
        e.required(&rp, "valid values: \"OnFailure\", \"Never\"");
    } else if policy != "OnFailure" && policy != "Never" {
        e.not_supported(&rp, &q(policy), &["OnFailure", "Never"]);
    } else if pfp.is_some() && policy != "Never" {
        e.invalid(
            &rp,
            &q(policy),
            "only \"Never\" is supported when podFailurePolicy is specified",
        );
    }
}

/// A `[]int32` as Go's `%#v` shows it.
fn show_int32s(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => "[]int32(nil)".into(),
        Some(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|n| n.as_i64().unwrap_or(0).to_string())
                .collect();
            format!("[]int32{{{}}}", items.join(", "))
        }
    }
}

/// `validatePodFailurePolicy` (not the limits on the number of rules and values).
fn pod_failure_policy(e: &mut Errs, spec: &Value, pfp: &Value, path: &str) {
    const ACTIONS: &[&str] = &["Count", "FailIndex", "FailJob", "Ignore"];
    let template_spec = spec
        .get("template")
        .and_then(|t| t.get("spec"))
        .unwrap_or(&NULL);
    let names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| template_spec.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| string(c, "name"))
        .collect();
    for (i, rule) in pfp
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let rp = format!("{path}.rules[{i}]");
        let action = string(rule, "action").unwrap_or_default();
        let ap = format!("{rp}.action");
        if action.is_empty() {
            e.required(
                &ap,
                "valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]",
            );
        } else if action == "FailIndex" {
            if !set(spec, "backoffLimitPerIndex") {
                e.invalid(
                    &ap,
                    &q(action),
                    "requires the backoffLimitPerIndex to be set",
                );
            }
        } else if !ACTIONS.contains(&action) {
            e.not_supported(&ap, &q(action), ACTIONS);
        }
        let codes = rule.get("onExitCodes").filter(|v| !v.is_null());
        let conditions = rule
            .get("onPodConditions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(codes) = codes {
            let cp = format!("{rp}.onExitCodes");
            let op = string(codes, "operator").unwrap_or_default();
            if op.is_empty() {
                e.required(
                    &format!("{cp}.operator"),
                    "valid values: [\"In\" \"NotIn\"]",
                );
            } else if op != "In" && op != "NotIn" {
                e.not_supported(&format!("{cp}.operator"), &q(op), &["In", "NotIn"]);
            }
            if let Some(name) = string(codes, "containerName")
                && !names.contains(&name)
            {
                e.invalid(
                    &format!("{cp}.containerName"),
                    &q(name),
                    "must be one of the container or initContainer names in the pod template",
                );
            }
            let values: Vec<i64> = codes
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(0)).collect())
                .unwrap_or_default();
            if values.is_empty() {
                e.invalid(
                    &format!("{cp}.values"),
                    &show_int32s(codes.get("values")),
                    "at least one value is required",
                );
            }
            for (j, v) in values.iter().enumerate() {
                let vp = format!("{cp}.values[{j}]");
                if op == "In" && *v == 0 {
                    e.invalid(&vp, "0", "must not be 0 for the In operator");
                }
                if values[..j].contains(v) {
                    e.0.push(duplicate(vp.as_str(), &v.to_string()));
                }
            }
            if values.windows(2).any(|w| w[0] > w[1]) {
                e.invalid(
                    &format!("{cp}.values"),
                    &show_int32s(codes.get("values")),
                    "must be ordered",
                );
            }
        }
        for (j, pattern) in conditions.iter().enumerate() {
            let sp = format!("{rp}.onPodConditions[{j}].status");
            match string(pattern, "status").unwrap_or_default() {
                "" => e.required(&sp, "valid values: [\"False\" \"True\" \"Unknown\"]"),
                "False" | "True" | "Unknown" => {}
                other => e.not_supported(&sp, &q(other), &["False", "True", "Unknown"]),
            }
        }
        if codes.is_some() && !conditions.is_empty() {
            e.invalid(
                &rp,
                "specifying both OnExitCodes and OnPodConditions is not supported",
                "",
            );
        }
        if codes.is_none() && conditions.is_empty() {
            e.invalid(
                &rp,
                "specifying one of OnExitCodes and OnPodConditions is required",
                "",
            );
        }
    }
}

fn job(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = obj.get("spec").unwrap_or(&NULL);
    job_spec_common(e, spec, "spec");
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    // Without `manualSelector` the selector and the template labels are generated from the
    // uid after validation on create (the job strategy's `PrepareForCreate`): nothing to check.
    if manual || old.is_some() {
        let sel = spec.get("selector").unwrap_or(&NULL);
        let template = spec.get("template").unwrap_or(&NULL);
        if sel.is_null() {
            e.required("spec.selector", "");
        } else if label_selector(e, sel, "spec.selector") {
            let labels = string_map(template.get("metadata").and_then(|m| m.get("labels")));
            if !selector_matches(sel, &labels.clone().unwrap_or_default())
                && !selector_is_empty(sel)
            {
                e.invalid(
                    "spec.template.metadata.labels",
                    &show_map(labels.as_ref()),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    let Some(old) = old else { return };
    let old_spec = old.get("spec").unwrap_or(&NULL);
    // Completions: immutable, except for Indexed jobs changing it with parallelism.
    let completions = spec.get("completions").unwrap_or(&NULL);
    if completions != old_spec.get("completions").unwrap_or(&NULL) {
        let show = completions
            .as_i64()
            .map_or_else(|| "null".to_string(), |n| n.to_string());
        if string(spec, "completionMode") != Some("Indexed") {
            e.invalid("spec.completions", &show, "field is immutable");
        } else if !completions.is_null() && completions != spec.get("parallelism").unwrap_or(&NULL)
        {
            e.invalid(
                "spec.completions",
                &show,
                "can only be modified in tandem with spec.parallelism",
            );
        }
    }
    immutable(
        e,
        spec,
        old_spec,
        "selector",
        "spec.selector",
        show_selector,
    );
    job_template_update(e, spec, old_spec, old);
    for key in [
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "managedBy",
        "successPolicy",
    ] {
        immutable(
            e,
            spec,
            old_spec,
            key,
            &format!("spec.{key}"),
            |v| match v {
                Value::String(s) => q(s),
                Value::Null => "null".into(),
                other => show_json(other),
            },
        );
    }
}

/// The pod template of a Job is immutable, except that a suspended Job that never started may
/// change its scheduling directives (labels, annotations, node selector, tolerations, affinity,
/// scheduling gates).
fn job_template_update(e: &mut Errs, spec: &Value, old_spec: &Value, old: &Value) {
    let new_t = spec.get("template").unwrap_or(&NULL);
    let old_t = old_spec.get("template").unwrap_or(&NULL);
    if new_t == old_t {
        return;
    }
    let suspended = old_spec.get("suspend").and_then(Value::as_bool) == Some(true);
    let started = old.get("status").is_some_and(|s| set(s, "startTime"));
    let mut compared = new_t.clone();
    if suspended && !started {
        // Take the mutable scheduling directives from the old template.
        let mut copy = new_t.clone();
        for key in ["labels", "annotations"] {
            match old_t.get("metadata").and_then(|m| m.get(key)) {
                Some(v) => copy["metadata"][key] = v.clone(),
                None => {
                    if let Some(m) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove(key);
                    }
                }
            }
        }
        for key in ["nodeSelector", "tolerations", "affinity", "schedulingGates"] {
            match old_t.get("spec").and_then(|m| m.get(key)) {
                Some(v) => copy["spec"][key] = v.clone(),
                None => {
                    if let Some(m) = copy.get_mut("spec").and_then(Value::as_object_mut) {
                        m.remove(key);
                    }
                }
            }
        }
        compared = copy;
    }
    if &compared != old_t {
        e.invalid("spec.template", &show_json(new_t), "field is immutable");
    }
}

/// `ValidateCronJobCreate` / `ValidateCronJobUpdate`.
fn cron_job(e: &mut Errs, obj: &Value, old: Option<&Value>) {
    let spec = obj.get("spec").unwrap_or(&NULL);
    let old_spec = old.map(|o| o.get("spec").unwrap_or(&NULL));
    if old.is_none() {
        let name = obj
            .get("metadata")
            .and_then(|m| string(m, "name"))
            .unwrap_or_default();
        if name.len() > CRONJOB_NAME_MAX {
            e.invalid(
                "metadata.name",
                &q(name),
                "must be no more than 52 characters",
            );
        }
    }
    let schedule = string(spec, "schedule").unwrap_or_default();
    if schedule.is_empty() {
        e.required("spec.schedule", "");
    } else {
        if let Err(m) = parse_schedule(schedule) {
            e.invalid("spec.schedule", &q(schedule), &m);
        }
        let allow_tz = old_spec
            .and_then(|s| string(s, "schedule"))
            .is_some_and(|s| s.contains("TZ"));
        if allow_tz && schedule.contains("TZ") && set(spec, "timeZone") {
            e.invalid(
                "spec.schedule",
                &q(schedule),
                "cannot use both timeZone field and TZ or CRON_TZ in schedule",
            );
        } else if !allow_tz && schedule.contains("TZ") {
            e.invalid(
                "spec.schedule",
                &q(schedule),
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            );
        }
    }
    e.nonnegative(
        spec,
        "startingDeadlineSeconds",
        "spec.startingDeadlineSeconds",
    );
    let tz = spec.get("timeZone").and_then(Value::as_str);
    if old_spec.is_none_or(|o| o.get("timeZone").and_then(Value::as_str) != tz)
        && let Some(tz) = tz
        && let Err(m) = time_zone(tz)
    {
        e.invalid("spec.timeZone", &q(tz), &m);
    }
    match string(spec, "concurrencyPolicy").unwrap_or_default() {
        "Allow" | "Forbid" | "Replace" => {}
        "" => e.required("spec.concurrencyPolicy", ""),
        other => e.not_supported(
            "spec.concurrencyPolicy",
            &q(other),
            &["Allow", "Forbid", "Replace"],
        ),
    }
    let jt = spec.get("jobTemplate").unwrap_or(&NULL);
    let js = jt.get("spec").unwrap_or(&NULL);
    job_spec_common(e, js, "spec.jobTemplate.spec");
    if let Some(sel) = js.get("selector").filter(|v| !v.is_null()) {
        e.invalid(
            "spec.jobTemplate.spec.selector",
            &show_selector(sel),
            "`selector` will be auto-generated",
        );
    }
    if js.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        e.not_supported(
            "spec.jobTemplate.spec.manualSelector",
            "true",
            &["nil", "false"],
        );
    }
    e.nonnegative(
        spec,
        "successfulJobsHistoryLimit",
        "spec.successfulJobsHistoryLimit",
    );
    e.nonnegative(
        spec,
        "failedJobsHistoryLimit",
        "spec.failedJobsHistoryLimit",
    );
}

/// `validateTimeZone`: Go's `time.LoadLocation` on the IANA database.
fn time_zone(tz: &str) -> Result<(), String> {
    if tz.is_empty() {
        return Err("timeZone must be nil or non-empty string".into());
    }
    let part_ok = |p: &str| {
        p != "."
            && p != ".."
            && !p.starts_with('-')
            && (1..=14).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
    };
    if !tz.split('/').all(part_ok) {
        return Err(format!("unknown time zone {tz}"));
    }
    if tz.eq_ignore_ascii_case("Local") {
        return Err(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        );
    }
    if tz == "UTC" || k8s_openapi::jiff::tz::TimeZone::get(tz).is_ok() || system_zone(tz) {
        return Ok(());
    }
    Err(format!("unknown time zone {tz}"))
}

/// Whether the system's zoneinfo has `tz` (a TZif file), as Go's `LoadLocation` looks there
/// too: jiff has the IANA database embedded only when the binary links rk3s-controller.
fn system_zone(tz: &str) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(std::path::Path::new("/usr/share/zoneinfo").join(tz))
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"TZif")
}

// ---------------------------------------------------------------------------------------------
// policy/v1, autoscaling

/// `ValidatePodDisruptionBudgetSpec`.
fn pod_disruption_budget(e: &mut Errs, spec: &Value) {
    let min = spec.get("minAvailable").filter(|v| !v.is_null());
    let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
    if let (Some(min), Some(max)) = (min, max) {
        e.invalid(
            "spec",
            &format!(
                "policy.PodDisruptionBudgetSpec{{MinAvailable:{}, MaxUnavailable:{}}}",
                show_int_or_string(min),
                show_int_or_string(max)
            ),
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    for (v, key) in [(min, "minAvailable"), (max, "maxUnavailable")] {
        if let Some(v) = v {
            let field = format!("spec.{key}");
            positive_int_or_percent(e, v, &field);
            not_more_than_100_percent(e, v, &field);
        }
    }
    label_selector(e, spec.get("selector").unwrap_or(&NULL), "spec.selector");
    if let Some(policy) = string(spec, "unhealthyPodEvictionPolicy")
        && policy != "AlwaysAllow"
        && policy != "IfHealthyBudget"
    {
        e.not_supported(
            "spec.unhealthyPodEvictionPolicy",
            &q(policy),
            &["AlwaysAllow", "IfHealthyBudget"],
        );
    }
}

/// The replica bounds and target of `validateHorizontalPodAutoscalerSpec` (v1 and v2 share
/// them; metrics and behavior are not checked).
fn horizontal_pod_autoscaler(e: &mut Errs, spec: &Value) {
    let min = int(spec, "minReplicas");
    let max = int(spec, "maxReplicas").unwrap_or(0);
    if let Some(min) = min
        && min < 1
    {
        e.invalid(
            "spec.minReplicas",
            &min.to_string(),
            "must be greater than or equal to 1",
        );
    }
    if max < 1 {
        e.invalid(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than 0",
        );
    }
    if let Some(min) = min
        && max < min
    {
        e.invalid(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than or equal to `minReplicas`",
        );
    }
    let target = spec.get("scaleTargetRef").unwrap_or(&NULL);
    for key in ["kind", "name"] {
        let field = format!("spec.scaleTargetRef.{key}");
        let v = string(target, key).unwrap_or_default();
        if v.is_empty() {
            e.required(&field, "");
        } else {
            for m in validate_name(NameRule::PathSegment, v) {
                e.invalid(&field, &q(v), &m);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// robfig/cron v3 `ParseStandard`, for its error messages

/// Bounds and names of a field.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    name_base: u32,
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
    name_base: 0,
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
    name_base: 0,
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
    name_base: 0,
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    name_base: 1,
};
const DOW: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    name_base: 0,
};

/// Go's `strconv.Atoi` then robfig's `mustParseInt`.
fn must_parse_int(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing {}: invalid syntax",
            q(s)
        ));
    }
    let Ok(n) = s.parse::<i64>() else {
        return Err(format!(
            "failed to parse int from {s}: strconv.Atoi: parsing {}: value out of range",
            q(s)
        ));
    };
    if n < 0 {
        return Err(format!("negative number ({n}) not allowed: {s}"));
    }
    u32::try_from(n).map_err(|_| format!("end of range ({n}) above maximum: {s}"))
}

fn int_or_name(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(u32::try_from(i).unwrap_or(0) + b.name_base);
    }
    must_parse_int(s)
}

/// robfig's `getRange` of one comma-separated part.
fn cron_range(expr: &str, b: &Bounds) -> Result<(), String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_high: Vec<&str> = range_and_step[0].split('-').collect();
    let (start, mut end) = if low_high[0] == "*" || low_high[0] == "?" {
        (b.min, b.max)
    } else {
        let start = int_or_name(low_high[0], b)?;
        let end = match low_high.len() {
            1 => start,
            2 => int_or_name(low_high[1], b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        (start, end)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = must_parse_int(range_and_step[1])?;
            if low_high.len() == 1 {
                end = b.max;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        ));
    }
    if end > b.max {
        return Err(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        ));
    }
    if start > end {
        return Err(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(())
}

/// Go's `time.ParseDuration`, for `@every`.
fn go_duration(s: &str) -> Result<(), String> {
    let bad = || format!("time: invalid duration {}", q(s));
    let mut rest = s.strip_prefix(['+', '-']).unwrap_or(s);
    if rest == "0" {
        return Ok(());
    }
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {}", q(s)));
        }
        if !["ns", "us", "µs", "μs", "ms", "s", "m", "h"].contains(&unit) {
            return Err(format!(
                "time: unknown unit {} in duration {}",
                q(unit),
                q(s)
            ));
        }
        rest = &rest[unit_len..];
    }
    Ok(())
}

/// robfig/cron v3 `ParseStandard` (5 fields or a descriptor), its error text on failure.
fn parse_schedule(spec: &str) -> Result<(), String> {
    if spec.is_empty() {
        return Err("empty spec string".into());
    }
    let mut spec = spec;
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let eq = spec.find('=').unwrap_or(0);
        let Some(sp) = spec.find(' ') else {
            return Err(format!(
                "provided bad location {}: unknown time zone",
                &spec[eq + 1..]
            ));
        };
        let loc = &spec[eq + 1..sp];
        if !loc.is_empty() && time_zone(loc).is_err() {
            return Err(format!(
                "provided bad location {loc}: unknown time zone {loc}"
            ));
        }
        spec = spec[sp..].trim();
    }
    if let Some(d) = spec.strip_prefix('@') {
        return match d {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            _ => match spec.strip_prefix("@every ") {
                Some(dur) => {
                    go_duration(dur).map_err(|m| format!("failed to parse duration {spec}: {m}"))
                }
                None => Err(format!("unrecognized descriptor: {spec}")),
            },
        };
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    for (field, bounds) in fields.iter().zip([&MINUTES, &HOURS, &DOM, &MONTHS, &DOW]) {
        for part in field.split(',').filter(|p| !p.is_empty()) {
            cron_range(part, bounds)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn info(group: &str, plural: &str) -> &'static ResourceInfo {
        crate::registry::REGISTRY
            .find(group, "v1", plural)
            .unwrap_or_else(|| panic!("{group}/{plural}"))
    }

    /// What the server validates: the object after upstream's defaulting (the pod template's
    /// policies and paths are then set, as core's pod spec checks expect).
    fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let defaulted = |o: &Value| {
            let mut o = o.clone();
            crate::defaults::apply(info, &mut o, true);
            o
        };
        super::validate(info, &defaulted(obj), old.map(defaulted).as_ref())
    }

    use crate::status::cause_lines as fields;

    fn deployment(spec: Value) -> Value {
        let mut d = json!({"metadata": {"name": "d"}, "spec": {
            "replicas": 1, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}},
        }});
        if let (Some(d), Some(s)) = (d["spec"].as_object_mut(), spec.as_object()) {
            for (k, v) in s {
                d.insert(k.clone(), v.clone());
            }
        }
        d
    }

    #[test]
    fn a_valid_deployment_passes() {
        let causes = validate(info("apps", "deployments"), &deployment(json!({})), None);
        assert!(causes.is_empty(), "{:?}", fields(&causes));
    }

    #[test]
    fn deployment_rules() {
        let i = info("apps", "deployments");
        let c = fields(&validate(i, &deployment(json!({"replicas": -1})), None));
        assert_eq!(
            c,
            ["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]
        );
        let c = fields(&validate(
            i,
            &deployment(json!({"selector": {"matchLabels": {"app": "other"}}})),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: \
              `selector` does not match template `labels`"
            ]
        );
        let c = fields(&validate(i, &deployment(json!({"selector": {}})), None));
        assert_eq!(
            c,
            [
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), \
              MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid \
              for deployment"
            ]
        );
        let c = fields(&validate(
            i,
            &deployment(json!({"strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "0%"}}})),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: intstr.IntOrString{\
              Type:0, IntVal:0, StrVal:\"\"}: may not be 0 when `maxSurge` is 0"
            ]
        );
        let c = fields(&validate(
            i,
            &deployment(
                json!({"minReadySeconds": 700, "selector": {"matchExpressions": [
                {"key": "app", "operator": "Exists", "values": ["x"]}]}}),
            ),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.selector.matchExpressions[0].values: Forbidden: may not be specified when \
                 `operator` is 'Exists' or 'DoesNotExist'",
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), \
                 MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{\
                 Key:\"app\", Operator:\"Exists\", Values:[]string{\"x\"}}}}: invalid label selector",
                "spec.progressDeadlineSeconds: Invalid value: 600: must be greater than \
                 minReadySeconds",
            ]
        );
        let old = deployment(json!({}));
        let new = deployment(
            json!({"selector": {"matchLabels": {"app": "web", "x": "y"}},
            "template": {"metadata": {"labels": {"app": "web", "x": "y"}},
                "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}),
        );
        let c = fields(&validate(i, &new, Some(&old)));
        assert_eq!(
            c,
            [
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\
              \"app\":\"web\", \"x\":\"y\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: \
              field is immutable"
            ]
        );
    }

    #[test]
    fn statefulset_updates_change_only_some_fields() {
        let i = info("apps", "statefulsets");
        let sts = |extra: Value| {
            let mut s = deployment(json!({}));
            let spec = s["spec"]
                .as_object_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            let mut spec: serde_json::Map<String, Value> = spec
                .into_iter()
                .filter(|(k, _)| k != "strategy" && k != "progressDeadlineSeconds")
                .collect();
            spec.insert("podManagementPolicy".into(), json!("OrderedReady"));
            spec.insert("serviceName".into(), json!("web"));
            spec.insert(
                "updateStrategy".into(),
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            for (k, v) in extra.as_object().cloned().unwrap_or_default() {
                spec.insert(k, v);
            }
            s["spec"] = Value::Object(spec);
            s
        };
        let old = sts(json!({}));
        assert!(
            validate(i, &old, None).is_empty(),
            "{:?}",
            fields(&validate(i, &old, None))
        );
        assert!(validate(i, &sts(json!({"replicas": 5})), Some(&old)).is_empty());
        let c = fields(&validate(
            i,
            &sts(json!({"serviceName": "other"})),
            Some(&old),
        ));
        assert_eq!(c.len(), 1);
        assert!(c[0].starts_with("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals'"), "{c:?}");
        let c = fields(&validate(
            i,
            &sts(json!({"podManagementPolicy": "Bogus"})),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.podManagementPolicy: Invalid value: \"Bogus\": must be 'OrderedReady' or 'Parallel'"
            ]
        );
    }

    #[test]
    fn daemonset_rolling_update() {
        let i = info("apps", "daemonsets");
        let ds = json!({"metadata": {"name": "d"}, "spec": {
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app": "x"}},
            "updateStrategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}},
        }});
        let c = fields(&validate(i, &ds, None));
        assert_eq!(
            c,
            [
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: intstr.IntOrString{Type:0, IntVal:1, StrVal:\"\"}: may not be set when maxUnavailable is non-zero",
            ]
        );
    }

    fn job_obj(spec: Value) -> Value {
        let mut j = json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {
            "parallelism": 1, "completions": 1, "backoffLimit": 6, "completionMode": "NonIndexed",
            "suspend": false, "podReplacementPolicy": "TerminatingOrFailed",
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}},
        }});
        // As defaulted: replacements wait for `Failed` pods under a podFailurePolicy.
        if spec.get("podFailurePolicy").is_some() {
            j["spec"]["podReplacementPolicy"] = json!("Failed");
        }
        for (k, v) in spec.as_object().cloned().unwrap_or_default() {
            j["spec"][k] = v;
        }
        j
    }

    #[test]
    fn job_rules_and_updates() {
        let i = info("batch", "jobs");
        assert!(validate(i, &job_obj(json!({})), None).is_empty());
        let c = fields(&validate(
            i,
            &job_obj(
                json!({"parallelism": -1, "template": {"spec": {"restartPolicy": "Always",
                "containers": [{"name": "c", "image": "i"}]}}}),
            ),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.parallelism: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
            ]
        );
        let c = fields(&validate(
            i,
            &job_obj(json!({"completionMode": "Indexed", "completions": null})),
            None,
        ));
        assert_eq!(
            c,
            ["spec.completions: Required value: when completion mode is Indexed"]
        );
        // With a podFailurePolicy replacements must wait for `Failed` pods.
        let pfp = json!({"rules": [{"action": "FailJob",
            "onExitCodes": {"operator": "In", "values": [42]}}]});
        let c = fields(&validate(
            i,
            &job_obj(json!({"podFailurePolicy": pfp.clone(),
                "podReplacementPolicy": "TerminatingOrFailed"})),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.podReplacementPolicy: Unsupported value: \"TerminatingOrFailed\": supported values: \"Failed\""
            ]
        );
        let ok = job_obj(json!({"podFailurePolicy": pfp}));
        assert!(validate(i, &ok, None).is_empty());
        // On update, with the generated selector.
        let generated = json!({"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
            "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u1"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}});
        let old = job_obj(generated);
        assert!(validate(i, &old, Some(&old)).is_empty());
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
        new["spec"]["completions"] = json!(3);
        let c = fields(&validate(i, &new, Some(&old)));
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            c[0],
            "spec.completions: Invalid value: 3: field is immutable"
        );
        assert!(
            c[1].starts_with("spec.template: Invalid value: ")
                && c[1].ends_with(": field is immutable"),
            "{c:?}"
        );
        // A suspended job that never started may change its node selector.
        let mut old = old;
        old["spec"]["suspend"] = json!(true);
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "a"});
        assert!(validate(i, &new, Some(&old)).is_empty());
    }

    #[test]
    fn disruption_budgets_and_autoscalers() {
        let pdb = info("policy", "poddisruptionbudgets");
        let c = fields(&validate(
            pdb,
            &json!({"spec": {"minAvailable": 1, "maxUnavailable": "120%"}}),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec: Invalid value: policy.PodDisruptionBudgetSpec{MinAvailable:intstr.IntOrString{Type:0, IntVal:1, StrVal:\"\"}, MaxUnavailable:intstr.IntOrString{Type:1, IntVal:0, StrVal:\"120%\"}}: minAvailable and maxUnavailable cannot be both set",
                "spec.maxUnavailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"120%\"}: must not be greater than 100%",
            ]
        );
        let hpa = crate::registry::REGISTRY
            .find("autoscaling", "v2", "horizontalpodautoscalers")
            .expect("hpa");
        let c = fields(&validate(
            hpa,
            &json!({"spec": {"minReplicas": 3, "maxReplicas": 2,
                "scaleTargetRef": {"kind": "Deployment", "name": "web"}}}),
            None,
        ));
        assert_eq!(
            c,
            ["spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"]
        );
    }

    #[test]
    fn job_failure_and_success_policies() {
        let i = info("batch", "jobs");
        let c = fields(&validate(
            i,
            &job_obj(
                json!({"backoffLimitPerIndex": 1, "successPolicy": {"rules": []},
                "podFailurePolicy": {"rules": [
                    {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 3, 2, 2]}},
                    {"action": "Explode", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}),
            ),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[0]: Invalid value: 0: must not be 0 for the In operator",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[3]: Duplicate value: 2",
                "spec.podFailurePolicy.rules[0].onExitCodes.values: Invalid value: []int32{0, 3, 2, 2}: must be ordered",
                "spec.podFailurePolicy.rules[1].action: Unsupported value: \"Explode\": supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"",
                "spec.podFailurePolicy.rules[1].onPodConditions[0].status: Required value: valid values: [\"False\" \"True\" \"Unknown\"]",
                "spec.successPolicy: Invalid value: batch.SuccessPolicy{Rules:[]batch.SuccessPolicyRule{}}: requires indexed completion mode",
            ]
        );
        let c = fields(&validate(
            i,
            &job_obj(json!({"podFailurePolicy": {"rules": [{"action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                "template": {"spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "c", "image": "i"}]}}})),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified"
            ]
        );
    }

    #[test]
    fn cron_schedules_as_robfig() {
        for ok in [
            "*/5 * * * *",
            "0 0 1 1 *",
            "@hourly",
            "@every 1h30m",
            "0 9-17 * JAN-mar mon-fri",
            "0,30 * ? * *",
        ] {
            assert_eq!(parse_schedule(ok), Ok(()), "{ok}");
        }
        for (bad, msg) in [
            ("bogus", "expected exactly 5 fields, found 1: [bogus]"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("* * * * 7", "end of range (7) above maximum (6): 7"),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            ("@often", "unrecognized descriptor: @often"),
            (
                "@every 1x",
                "failed to parse duration @every 1x: time: unknown unit \"x\" in duration \"1x\"",
            ),
            (
                "*/0 * * * *",
                "step of range should be a positive number: */0",
            ),
        ] {
            assert_eq!(parse_schedule(bad), Err(msg.to_string()), "{bad}");
        }
        assert_eq!(time_zone("Europe/Paris"), Ok(()));
        assert_eq!(
            time_zone("Mars/Base"),
            Err("unknown time zone Mars/Base".into())
        );
    }

    #[test]
    fn cronjob_rules() {
        let i = info("batch", "cronjobs");
        let cj = |spec: Value| {
            let mut c = json!({"metadata": {"name": "c"}, "spec": {
                "schedule": "*/1 * * * *", "concurrencyPolicy": "Allow", "suspend": false,
                "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1,
                "jobTemplate": {"spec": job_obj(json!({}))["spec"].clone()}}});
            for (k, v) in spec.as_object().cloned().unwrap_or_default() {
                c["spec"][k] = v;
            }
            c
        };
        assert!(validate(i, &cj(json!({})), None).is_empty());
        let c = fields(&validate(
            i,
            &cj(
                json!({"schedule": "TZ=UTC 0 * * * *", "timeZone": "Nowhere/Land",
                "concurrencyPolicy": "Sometimes", "failedJobsHistoryLimit": -1}),
            ),
            None,
        ));
        assert_eq!(
            c,
            [
                "spec.schedule: Invalid value: \"TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                "spec.timeZone: Invalid value: \"Nowhere/Land\": unknown time zone Nowhere/Land",
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
                "spec.failedJobsHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
            ]
        );
    }
}
