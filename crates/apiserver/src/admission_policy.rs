//! Validating admission policies: upstream's ValidatingAdmissionPolicy plugin
//! (`k8s.io/apiserver/pkg/admission/plugin/policy/validating`) on the
//! `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicy`s and their bindings.
//!
//! [`validate`] runs where the validating webhooks run (`admission_webhook::validate`), before
//! them, on the same requests (creates, updates — also `/status` —, deletes; the admission
//! configuration kinds themselves are never intercepted).
//!
//! - **Reading**: policies and bindings come from the watch cache (the store until their
//!   cache has started), as the webhook configurations do. A policy is compiled once per
//!   `uid` and `resourceVersion` ([`COMPILED`]); bindings are parsed per request (cheap).
//!   Policies are taken in name order, each with its bindings (`spec.policyName`) in name
//!   order; a policy without a binding does nothing.
//! - **Matching** (upstream's `matching.Matcher`): the policy's `matchConstraints` and then
//!   the binding's `matchResources` (absent: everything the policy matches):
//!   `namespaceSelector` (cluster-scoped objects other than namespaces always match),
//!   `objectSelector` (new or old labels), `excludeResourceRules`, `resourceRules` (rules as
//!   webhooks', plus `resourceNames`; none: every resource), `matchPolicy: Equivalent` (the
//!   default) over the other served versions of the same storage — the expressions then see
//!   the object in the matched version.
//! - **Params**: `paramKind` (a built-in or a served custom resource) and the binding's
//!   `paramRef`: by `name` or `selector`, in `namespace` (else the request's namespace; a
//!   cluster-scoped request then fails the binding), each param evaluated in turn; none
//!   found: `parameterNotFoundAction: Deny` fails the binding, `Allow` skips it.
//! - **CEL** (with [`authorizer::ENV`]: `crate::crd::cel::ENV`'s functions and the authz
//!   library): `object`, `oldObject` (`null` when absent), `request` (the
//!   `AdmissionRequest` as webhooks get it, without `uid`/objects), `params`,
//!   `namespaceObject` (the request's Namespace with upstream's fields; `null` for
//!   cluster-scoped requests), `variables` (`spec.variables`, evaluated at most once per
//!   evaluation and only those an expression references — eagerly before it, not lazily
//!   inside it: a variable that fails fails every expression referencing it, also in a
//!   branch that would not be taken), and — except in `messageExpression`s — `authorizer`
//!   and `authorizer.requestResource` ([`authorizer`]: checks decided by the authorizer
//!   chain for the request's user; an evaluation whose checks need I/O is repeated with
//!   their answers, so an evaluation has no effects: its audit annotations are applied
//!   after the last). A library function's error is its message, as cel-go's.
//!   `matchConditions` (false: the policy is skipped for that binding and param; errors
//!   follow `failurePolicy`), then `validations`: a result other than `true` is a
//!   violation whose message is `messageExpression`'s string, else `message`, else
//!   `failed expression: <expression>`, with `reason` (default `Invalid`); an evaluation
//!   error is a violation under `failurePolicy: Fail` (the default) and ignored under
//!   `Ignore`. `auditAnnotations`: a string value is the request's audit annotation
//!   `<policy>/<key>`, an error follows the same rule.
//! - **Actions** (the binding's `validationActions`): `Deny` → the first violation is the
//!   answer: upstream's `<resource> "<name>" is forbidden: ValidatingAdmissionPolicy '<p>'
//!   with binding '<b>' denied request: <message>` with the violation's reason (`Invalid`
//!   422 by default, `Forbidden` 403, `RequestEntityTooLarge` 413) and the inner message as
//!   a cause; `Warn` → a `Warning` header `Validation failed for ValidatingAdmissionPolicy
//!   '<p>' with binding '<b>': <message>`; `Audit` → the request's audit annotation
//!   `validation.policy.admission.k8s.io/validation_failure`, upstream's JSON list of
//!   `{message, policy, binding, expressionIndex, validationActions}`.
//! - Configuration errors (an unknown `paramKind`, params that cannot be read, `Deny` with
//!   no params) are violations `failed to configure policy: ...` / `failed to configure
//!   binding: ...` under `failurePolicy: Fail`, ignored under `Ignore`.
//!
//! Not done: type checking (`status.typeChecking` is never written, nor
//! `status.observedGeneration`), cost limits, metrics.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Program, Value as Cel};
use rk3s_datastore::ListOptions;
use serde_json::{Value, json};

use crate::admission_webhook::{
    Attrs, Operation, Request, Rule, equivalents, review, rule_matches, served_as, strings,
};
use crate::crd::cel::to_cel;
use crate::registry::{REGISTRY, ResourceInfo};
use crate::rest::{decode_stored, object_meta_str};
use crate::selectors::{LabelSelector, selector_text};
use crate::server::AppState;
use crate::status::{ApiError, qualified};
use authorizer::{ENV, RequestResource, Session};

mod authorizer;

const GROUP: &str = "admissionregistration.k8s.io";
/// The audit annotation of the `Audit` action's failures.
const AUDIT_FAILURE_KEY: &str = "validation.policy.admission.k8s.io/validation_failure";

/// Runs the validating admission policies bound to a create or update (`obj`, and `old` for
/// updates) or a delete (`old`: the object being deleted) of the request `req`.
pub(crate) async fn validate(
    state: &AppState,
    req: &Request,
    info: &ResourceInfo,
    op: Operation,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let bindings = bindings(state).await?;
    if bindings.is_empty() {
        return Ok(());
    }
    let policies = policies(state).await?;
    let attrs = Attrs {
        req,
        info,
        op,
        obj,
        old,
    };
    let mut namespace = NamespaceCache::default();
    let session = Session::new(state);
    let mut denied: Vec<Violation> = Vec::new();
    let mut audits: Vec<Value> = Vec::new();
    for policy in &policies {
        let bound: Vec<&Binding> = bindings
            .iter()
            .filter(|b| b.policy == policy.name)
            .collect();
        if bound.is_empty() {
            continue;
        }
        let target = match &policy.constraints {
            None => continue,
            Some(m) => match matches(state, m, &attrs, &mut namespace).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    config_error(
                        &mut denied,
                        policy,
                        None,
                        format!("failed to configure policy: {e}"),
                    );
                    continue;
                }
            },
        };
        let param_info = match &policy.param_kind {
            None => None,
            Some(kind) => match param_resource(state, kind) {
                Some(i) => Some(i),
                None => {
                    let error = format!(
                        "failed to configure policy: failed to find resource referenced by \
                         paramKind: '{}'",
                        kind.gvk()
                    );
                    config_error(&mut denied, policy, None, error);
                    continue;
                }
            },
        };
        let mut objects = [Value::Null, Value::Null];
        for (slot, o) in objects.iter_mut().zip([obj, old]) {
            if let Some(o) = o {
                *slot = served_as(state, info, &target, o.clone()).await?;
            }
        }
        let [object, old_object] = objects;
        let request = admission_request(&attrs, &target);
        let request_resource = RequestResource {
            group: target.group.to_string(),
            resource: target.plural.to_string(),
            subresource: req.subresource.clone(),
            namespace: attrs.namespace(),
            name: attrs.name(),
        };
        for binding in bound {
            if let Some(m) = &binding.matcher {
                match matches(state, m, &attrs, &mut namespace).await {
                    Ok(Some(_)) => {}
                    Ok(None) => continue,
                    Err(e) => {
                        let error = format!("failed to configure binding: {e}");
                        config_error(&mut denied, policy, Some(binding), error);
                        continue;
                    }
                }
            }
            let params = match params(state, policy, param_info.as_ref(), binding, &attrs).await {
                Ok(p) => p,
                Err(e) => {
                    let error = format!("failed to configure binding: {e}");
                    config_error(&mut denied, policy, Some(binding), error);
                    continue;
                }
            };
            if params.is_empty() {
                continue;
            }
            let namespace_object = namespace.object(state, &attrs).await?;
            for param in params {
                let input = Input {
                    object: &object,
                    old_object: &old_object,
                    request: &request,
                    params: param.as_ref().unwrap_or(&Value::Null),
                    namespace: namespace_object.as_ref().unwrap_or(&Value::Null),
                    authorizer: Some(Authz {
                        session: &session,
                        user: &req.user,
                        request: &request_resource,
                    }),
                };
                let outcome = session.resolve(state, || evaluate(policy, &input)).await;
                // Upstream's audit annotation `<policy>/<key>` on the request's event.
                if let Some(slot) = crate::audit::current() {
                    for (key, value) in outcome.annotations {
                        slot.annotate(key, value, crate::audit::Level::Metadata);
                    }
                }
                for decision in outcome.decisions {
                    act(req, policy, binding, decision, &mut denied, &mut audits);
                }
            }
        }
    }
    // Upstream's `Audit` action: every failure of the request in one annotation.
    if !audits.is_empty()
        && let Some(slot) = crate::audit::current()
    {
        slot.annotate(
            AUDIT_FAILURE_KEY.to_string(),
            Value::Array(audits).to_string(),
            crate::audit::Level::Metadata,
        );
    }
    match denied.into_iter().next() {
        Some(v) => Err(denial(&attrs, v)),
        None => Ok(()),
    }
}

// ---- the objects ----------------------------------------------------------------------------

/// A compiled CEL expression: its program (or the compile error), and the variables it
/// references, directly or through other variables, in declaration order.
struct Expression {
    source: String,
    program: Result<Program, String>,
    needs: Vec<usize>,
}

struct Validation {
    expression: Expression,
    message: String,
    message_expression: Option<Expression>,
    reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct ParamKind {
    api_version: String,
    kind: String,
}

impl ParamKind {
    /// Go's `GroupVersionKind.String()`: `group/version, Kind=kind`.
    fn gvk(&self) -> String {
        let gv = if self.api_version.contains('/') {
            self.api_version.clone()
        } else {
            format!("/{}", self.api_version)
        };
        format!("{gv}, Kind={}", self.kind)
    }
}

/// A policy's `matchConstraints` or a binding's `matchResources`.
struct Matcher {
    namespace_selector: Result<LabelSelector, String>,
    object_selector: Result<LabelSelector, String>,
    rules: Vec<NamedRule>,
    exclude: Vec<NamedRule>,
    /// `matchPolicy: Exact` (default `Equivalent`).
    exact: bool,
}

struct NamedRule {
    rule: Rule,
    names: Vec<String>,
}

/// A compiled policy.
struct Policy {
    name: String,
    param_kind: Option<ParamKind>,
    constraints: Option<Matcher>,
    /// `failurePolicy: Fail` (the default).
    fail: bool,
    match_conditions: Vec<(String, Expression)>,
    variables: Vec<(String, Expression)>,
    validations: Vec<Validation>,
    audit_annotations: Vec<(String, Expression)>,
}

struct ParamRef {
    name: String,
    namespace: String,
    selector: Option<Result<LabelSelector, String>>,
    /// `parameterNotFoundAction: Deny`.
    deny_not_found: bool,
}

struct Binding {
    name: String,
    policy: String,
    param_ref: Option<ParamRef>,
    matcher: Option<Matcher>,
    actions: Vec<String>,
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn parse_rules(v: Option<&Value>) -> Vec<NamedRule> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| NamedRule {
            rule: Rule::parse(r),
            names: strings(r.get("resourceNames")),
        })
        .collect()
}

fn parse_matcher(m: &Value) -> Matcher {
    let selector = |k: &str| LabelSelector::parse(&selector_text(m.get(k)));
    Matcher {
        namespace_selector: selector("namespaceSelector"),
        object_selector: selector("objectSelector"),
        rules: parse_rules(m.get("resourceRules")),
        exclude: parse_rules(m.get("excludeResourceRules")),
        exact: text(m, "matchPolicy") == "Exact",
    }
}

/// The names an expression of each kind may reference (upstream's environments).
const VALIDATION_NAMES: &[&str] = &[
    "object",
    "oldObject",
    "request",
    "params",
    "namespaceObject",
    "variables",
    "authorizer",
];
const MESSAGE_NAMES: &[&str] = &[
    "object",
    "oldObject",
    "request",
    "params",
    "namespaceObject",
    "variables",
];
const MATCH_NAMES: &[&str] = &["object", "oldObject", "request", "params", "authorizer"];

/// The names of `names` an expression may use: `params` only with a `paramKind`.
fn declared<'a>(names: &[&'a str], has_params: bool) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|n| has_params || *n != "params")
        .collect()
}

/// Where an expression of a policy or webhook configuration is used (which names it sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpressionKind {
    /// A policy's validation, variable or audit annotation value.
    Validation,
    /// A validation's `messageExpression`.
    Message,
    /// A `matchConditions` expression (policies and webhooks).
    MatchCondition,
}

/// The compile error of `source` (upstream's `compilation failed: ...`), if any: `params`
/// declared when `has_params`, and `variables.<name>` for the `variables` declared before.
pub(crate) fn compile_error(
    source: &str,
    kind: ExpressionKind,
    has_params: bool,
    variables: &[&str],
) -> Option<String> {
    let names = match kind {
        ExpressionKind::Validation => VALIDATION_NAMES,
        ExpressionKind::Message => MESSAGE_NAMES,
        ExpressionKind::MatchCondition => MATCH_NAMES,
    };
    let declared_variables: Vec<(String, Expression)> = variables
        .iter()
        .map(|n| {
            let placeholder = Expression {
                source: String::new(),
                program: Err(String::new()),
                needs: Vec::new(),
            };
            (n.to_string(), placeholder)
        })
        .collect();
    compile(source, &declared(names, has_params), &declared_variables)
        .program
        .err()
}

/// Compiles `source` where `names` are declared and `variables` (with what each needs) are
/// the policy's variables so far.
fn compile(source: &str, names: &[&str], variables: &[(String, Expression)]) -> Expression {
    let program = ENV
        .compile(source)
        .map_err(|e| format!("compilation failed: {e}"));
    let (program, needs) = match program {
        Err(e) => (Err(e), Vec::new()),
        Ok(p) => {
            let mut refs = Refs {
                names,
                variables,
                needs: Vec::new(),
                error: None,
            };
            refs.walk(p.expression(), &mut Vec::new());
            match refs.error {
                Some((id, message)) => (
                    Err(format!(
                        "compilation failed: {}",
                        located(source, &p, id, &message)
                    )),
                    Vec::new(),
                ),
                None => {
                    let mut needs = refs.needs;
                    needs.sort_unstable();
                    needs.dedup();
                    (Ok(p), needs)
                }
            }
        }
    };
    Expression {
        source: source.to_string(),
        program,
        needs,
    }
}

/// cel-go's error form: `ERROR: <input>:L:C: message`, the source line and a caret.
fn located(source: &str, program: &Program, id: u64, message: &str) -> String {
    let start = program
        .source_info()
        .offset_for(id)
        .map_or(0, |(s, _)| s as usize)
        .min(source.len());
    let before = source.get(..start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count();
    let text = source[line_start..].lines().next().unwrap_or("");
    format!(
        "ERROR: <input>:{line}:{}: {message}\n | {}\n | {}^",
        column + 1,
        text.replace('\t', " "),
        ".".repeat(column.min(text.chars().count()))
    )
}

/// The references of an expression: undeclared names are errors; `variables.<name>` must
/// name a variable declared before.
struct Refs<'a> {
    names: &'a [&'a str],
    variables: &'a [(String, Expression)],
    needs: Vec<usize>,
    error: Option<(u64, String)>,
}

impl Refs<'_> {
    fn walk(&mut self, e: &IdedExpr, bound: &mut Vec<String>) {
        if self.error.is_some() {
            return;
        }
        match &e.expr {
            Expr::Ident(name) => {
                if !name.starts_with('@')
                    && !bound.iter().any(|b| b == name)
                    && !self.names.contains(&name.as_str())
                {
                    self.error = Some((
                        e.id,
                        format!("undeclared reference to '{name}' (in container '')"),
                    ));
                }
            }
            Expr::Select(s) => {
                let is_variables = matches!(&s.operand.expr, Expr::Ident(n)
                    if n == "variables"
                        && !bound.iter().any(|b| b == n)
                        && self.names.contains(&"variables"));
                if is_variables {
                    match self.variables.iter().position(|(n, _)| *n == s.field) {
                        Some(i) => {
                            self.needs.push(i);
                            self.needs.extend(self.variables[i].1.needs.iter().copied());
                        }
                        None => {
                            self.error = Some((e.id, format!("undefined field '{}'", s.field)));
                        }
                    }
                } else {
                    self.walk(&s.operand, bound);
                }
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    // `math.greatest(..)`, `optional.of(..)`: a namespace, not a variable
                    // (`authorizer.group(..)` where `authorizer` is not declared: undeclared).
                    let namespace = matches!(&t.expr, Expr::Ident(n)
                        if !self.names.contains(&n.as_str())
                            && !VALIDATION_NAMES.contains(&n.as_str())
                            && !bound.iter().any(|b| b == n));
                    if !namespace {
                        self.walk(t, bound);
                    }
                }
                for a in &c.args {
                    self.walk(a, bound);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                self.walk(&c.accu_init, bound);
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    bound.push(v.clone());
                }
                bound.push(c.accu_var.clone());
                self.walk(&c.loop_cond, bound);
                self.walk(&c.loop_step, bound);
                self.walk(&c.result, bound);
                bound.truncate(depth);
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.walk(x, bound)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    self.entry(&entry.expr, bound);
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    self.entry(&entry.expr, bound);
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn entry(&mut self, entry: &EntryExpr, bound: &mut Vec<String>) {
        match entry {
            EntryExpr::StructField(f) => self.walk(&f.value, bound),
            EntryExpr::MapEntry(me) => {
                self.walk(&me.key, bound);
                self.walk(&me.value, bound);
            }
        }
    }
}

impl Policy {
    fn compile(p: &Value) -> Policy {
        let spec = p.get("spec").unwrap_or(&Value::Null);
        let param_kind = spec
            .get("paramKind")
            .filter(|k| k.is_object())
            .map(|k| ParamKind {
                api_version: text(k, "apiVersion").to_string(),
                kind: text(k, "kind").to_string(),
            });
        let has_params = param_kind.is_some();
        let validation_names = declared(VALIDATION_NAMES, has_params);
        let message_names = declared(MESSAGE_NAMES, has_params);
        let match_names = declared(MATCH_NAMES, has_params);
        let mut variables: Vec<(String, Expression)> = Vec::new();
        for v in items(spec, "variables") {
            let e = compile(text(v, "expression"), &validation_names, &variables);
            variables.push((text(v, "name").to_string(), e));
        }
        let match_conditions = items(spec, "matchConditions")
            .iter()
            .map(|c| {
                let e = compile(text(c, "expression"), &match_names, &[]);
                (text(c, "name").to_string(), e)
            })
            .collect();
        let validations = items(spec, "validations")
            .iter()
            .map(|v| Validation {
                expression: compile(text(v, "expression"), &validation_names, &variables),
                message: text(v, "message").to_string(),
                message_expression: Some(text(v, "messageExpression"))
                    .filter(|m| !m.trim().is_empty())
                    .map(|m| compile(m, &message_names, &variables)),
                reason: v.get("reason").and_then(Value::as_str).map(str::to_string),
            })
            .collect();
        let audit_annotations = items(spec, "auditAnnotations")
            .iter()
            .map(|a| {
                let e = compile(text(a, "valueExpression"), &validation_names, &variables);
                (text(a, "key").to_string(), e)
            })
            .collect();
        Policy {
            name: object_meta_str(p, "name").to_string(),
            param_kind,
            constraints: spec
                .get("matchConstraints")
                .filter(|m| m.is_object())
                .map(parse_matcher),
            fail: text(spec, "failurePolicy") != "Ignore",
            match_conditions,
            variables,
            validations,
            audit_annotations,
        }
    }
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

impl Binding {
    fn parse(b: &Value) -> Binding {
        let spec = b.get("spec").unwrap_or(&Value::Null);
        Binding {
            name: object_meta_str(b, "name").to_string(),
            policy: text(spec, "policyName").to_string(),
            param_ref: spec
                .get("paramRef")
                .filter(|r| r.is_object())
                .map(|r| ParamRef {
                    name: text(r, "name").to_string(),
                    namespace: text(r, "namespace").to_string(),
                    selector: r
                        .get("selector")
                        .filter(|s| s.is_object())
                        .map(|s| LabelSelector::parse(&selector_text(Some(s)))),
                    deny_not_found: text(r, "parameterNotFoundAction") == "Deny",
                }),
            matcher: spec
                .get("matchResources")
                .filter(|m| m.is_object())
                .map(parse_matcher),
            actions: strings(spec.get("validationActions")),
        }
    }
}

/// Compiled policies by (uid, resourceVersion): a policy is compiled once per version.
static COMPILED: LazyLock<Mutex<HashMap<PolicyVersion, Arc<Policy>>>> =
    LazyLock::new(Default::default);

/// A policy's `uid` and `resourceVersion`.
type PolicyVersion = (String, String);

/// Every policy, compiled, in name order.
async fn policies(state: &AppState) -> Result<Vec<Arc<Policy>>, ApiError> {
    let objects = list_all(state, "validatingadmissionpolicies").await?;
    let mut cache = COMPILED.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() > 4096 {
        cache.clear();
    }
    Ok(objects
        .iter()
        .map(|p| {
            let key = (
                object_meta_str(p, "uid").to_string(),
                object_meta_str(p, "resourceVersion").to_string(),
            );
            cache
                .entry(key)
                .or_insert_with(|| Arc::new(Policy::compile(p)))
                .clone()
        })
        .collect())
}

/// Every binding, in name order.
async fn bindings(state: &AppState) -> Result<Vec<Binding>, ApiError> {
    Ok(list_all(state, "validatingadmissionpolicybindings")
        .await?
        .iter()
        .map(Binding::parse)
        .collect())
}

async fn list_all(state: &AppState, plural: &str) -> Result<Vec<Value>, ApiError> {
    let info = REGISTRY
        .find(GROUP, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    read(state, info, &info.prefix(None), false).await
}

/// The objects of `info` under `key` (one object when `exact`), from the watch cache, or
/// from the store while it has not started (then started).
async fn read(
    state: &AppState,
    info: &ResourceInfo,
    key: &[u8],
    exact: bool,
) -> Result<Vec<Value>, ApiError> {
    if let Some(list) = state.watch_cache.list(info, key, exact, None, 0).await? {
        return Ok(list.objects.iter().map(|(_, o)| o.to_value()).collect());
    }
    if exact {
        let (revision, kv) = state.store.get(key, 0).await?;
        state.watch_cache.start(info, revision);
        return kv.map(|kv| decode_stored(&kv)).into_iter().collect();
    }
    let listed = state.store.list(key, ListOptions::default()).await?;
    state.watch_cache.start(info, listed.revision);
    listed.kvs.iter().map(decode_stored).collect()
}

// ---- matching -------------------------------------------------------------------------------

/// The request's namespace, read once per admission.
#[derive(Default)]
struct NamespaceCache(Option<Option<Value>>);

impl NamespaceCache {
    async fn get(&mut self, state: &AppState, name: &str) -> Result<Option<Value>, ApiError> {
        if let Some(ns) = &self.0 {
            return Ok(ns.clone());
        }
        let info = REGISTRY
            .find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not registered"))?;
        let ns = read(state, info, &info.key(None, name), true)
            .await?
            .into_iter()
            .next();
        self.0 = Some(ns.clone());
        Ok(ns)
    }

    /// `namespaceObject`: upstream's `CreateNamespaceObject` of the request's namespace
    /// (`None` for cluster-scoped requests and namespaces themselves).
    async fn object(
        &mut self,
        state: &AppState,
        attrs: &Attrs<'_>,
    ) -> Result<Option<Value>, ApiError> {
        if attrs.is_namespace() || attrs.req.namespace.is_empty() {
            return Ok(None);
        }
        let Some(ns) = self.get(state, &attrs.req.namespace).await? else {
            return Ok(None);
        };
        let mut meta = serde_json::Map::new();
        if let Some(m) = ns.get("metadata").and_then(Value::as_object) {
            for key in [
                "name",
                "generateName",
                "namespace",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "labels",
                "annotations",
                "finalizers",
            ] {
                if let Some(v) = m.get(key) {
                    meta.insert(key.into(), v.clone());
                }
            }
        }
        let mut out = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta});
        for key in ["spec", "status"] {
            if let Some(v) = ns.get(key) {
                out[key] = v.clone();
            }
        }
        Ok(Some(out))
    }
}

/// Upstream's `Matcher.Matches`: the resource (version) the request matched as, `None`
/// when it does not match, `Err` for a selector that cannot be used.
async fn matches(
    state: &AppState,
    m: &Matcher,
    attrs: &Attrs<'_>,
    namespace: &mut NamespaceCache,
) -> Result<Option<ResourceInfo>, String> {
    let ns_match = namespace_matches(state, m, attrs, namespace).await;
    if matches!(ns_match, Ok(false)) {
        return Ok(None);
    }
    let obj_match = m.object_selector.as_ref().map(|s| {
        let matched =
            |o: Option<&Value>| o.is_some_and(|o| s.matches(&crate::rest::object_labels(o)));
        s.is_empty() || matched(attrs.obj) || matched(attrs.old)
    });
    if matches!(obj_match, Ok(false)) {
        return Ok(None);
    }
    if rules_match(state, &m.exclude, m.exact, attrs).is_some() {
        return Ok(None);
    }
    let target = if m.rules.is_empty() {
        Some(attrs.info.clone())
    } else {
        rules_match(state, &m.rules, m.exact, attrs)
    };
    let Some(target) = target else {
        return Ok(None);
    };
    ns_match?;
    obj_match?;
    Ok(Some(target))
}

/// The first resource (the request's, else an equivalent one) that one of `rules` covers.
fn rules_match(
    state: &AppState,
    rules: &[NamedRule],
    exact: bool,
    attrs: &Attrs<'_>,
) -> Option<ResourceInfo> {
    let name = attrs.name();
    let hit = |target: &ResourceInfo| {
        rules.iter().any(|r| {
            rule_matches(&r.rule, attrs, target) && (r.names.is_empty() || r.names.contains(&name))
        })
    };
    if rules.is_empty() {
        return None;
    }
    if hit(attrs.info) {
        return Some(attrs.info.clone());
    }
    if exact {
        return None;
    }
    equivalents(state, attrs.info).into_iter().find(|e| hit(e))
}

async fn namespace_matches(
    state: &AppState,
    m: &Matcher,
    attrs: &Attrs<'_>,
    namespace: &mut NamespaceCache,
) -> Result<bool, String> {
    let selector = m
        .namespace_selector
        .as_ref()
        .map_err(|e| format!("invalid namespaceSelector: {e}"))?;
    let name = attrs.namespace();
    if name.is_empty() && !attrs.is_namespace() {
        // Cluster-scoped objects other than namespaces always match.
        return Ok(true);
    }
    if selector.is_empty() {
        return Ok(true);
    }
    let labels = if attrs.is_namespace()
        && attrs.req.subresource.is_empty()
        && matches!(attrs.op, Operation::Create | Operation::Update)
    {
        attrs
            .obj
            .map(crate::rest::object_labels)
            .unwrap_or_default()
    } else {
        match namespace.get(state, &name).await {
            Ok(Some(ns)) => crate::rest::object_labels(&ns),
            Ok(None) => return Err(format!("namespaces {name:?} not found")),
            Err(e) => return Err(e.message),
        }
    };
    Ok(selector.matches(&labels))
}

// ---- params -------------------------------------------------------------------------------

/// The served resource of a `paramKind` (a built-in or a custom resource).
fn param_resource(state: &AppState, kind: &ParamKind) -> Option<ResourceInfo> {
    let (group, version) = kind
        .api_version
        .split_once('/')
        .unwrap_or(("", kind.api_version.as_str()));
    let found = |r: &&ResourceInfo| r.group == group && r.version == version && r.kind == kind.kind;
    if let Some(r) = REGISTRY
        .groups
        .iter()
        .flat_map(|g| g.resources.iter())
        .find(found)
    {
        return Some(r.clone());
    }
    let snapshot = state.crds.snapshot();
    snapshot
        .groups
        .iter()
        .flat_map(|g| g.resources.iter())
        .find(found)
        .cloned()
}

/// Upstream's `CollectParams`: the params to evaluate the policy with (`None`: no params),
/// or why the binding cannot be used.
async fn params(
    state: &AppState,
    policy: &Policy,
    info: Option<&ResourceInfo>,
    binding: &Binding,
    attrs: &Attrs<'_>,
) -> Result<Vec<Option<Value>>, String> {
    let (Some(kind), Some(info), Some(pref)) = (&policy.param_kind, info, &binding.param_ref)
    else {
        return Ok(vec![None]);
    };
    let namespace = if info.namespaced {
        let ns = if pref.namespace.is_empty() {
            attrs.namespace()
        } else {
            pref.namespace.clone()
        };
        if ns.is_empty() {
            return Err(
                "cannot use namespaced paramRef in policy binding that matches cluster-scoped \
                 resources"
                    .into(),
            );
        }
        Some(ns)
    } else {
        if !pref.namespace.is_empty() {
            return Err(
                "paramRef.namespace must not be provided for a cluster-scoped `paramKind`".into(),
            );
        }
        None
    };
    let found: Vec<Value> = if !pref.name.is_empty() {
        let key = info.key(namespace.as_deref(), &pref.name);
        read(state, info, &key, true).await.map_err(|e| e.message)?
    } else if let Some(selector) = &pref.selector {
        let selector = selector.as_ref().map_err(Clone::clone)?;
        read(state, info, &info.prefix(namespace.as_deref()), false)
            .await
            .map_err(|e| e.message)?
            .into_iter()
            .filter(|o| selector.matches(&crate::rest::object_labels(o)))
            .collect()
    } else {
        Vec::new()
    };
    if found.is_empty() && pref.deny_not_found {
        return Err(
            "no params found for policy binding with `Deny` parameterNotFoundAction".into(),
        );
    }
    Ok(found
        .into_iter()
        .map(|o| {
            let mut o = crate::rest::served_form(info, o);
            if let Some(m) = o.as_object_mut() {
                m.entry("apiVersion")
                    .or_insert_with(|| json!(kind.api_version));
                m.entry("kind").or_insert_with(|| json!(kind.kind));
            }
            Some(o)
        })
        .collect())
}

// ---- evaluation -----------------------------------------------------------------------------

/// Upstream's `CreateAdmissionRequest`: the webhooks' `AdmissionRequest` without `uid` and
/// the objects.
fn admission_request(attrs: &Attrs<'_>, target: &ResourceInfo) -> Value {
    let mut r = review("v1", "", attrs, target, Value::Null, Value::Null);
    let mut request = r.get_mut("request").map(Value::take).unwrap_or(Value::Null);
    if let Some(m) = request.as_object_mut() {
        for key in ["uid", "object", "oldObject"] {
            m.remove(key);
        }
    }
    request
}

/// The values of one evaluation.
struct Input<'a> {
    object: &'a Value,
    old_object: &'a Value,
    request: &'a Value,
    params: &'a Value,
    namespace: &'a Value,
    /// `authorizer` and `authorizer.requestResource` (absent: expressions using them fail).
    authorizer: Option<Authz<'a>>,
}

/// What the `authorizer` of an evaluation checks with and for whom.
#[derive(Clone, Copy)]
struct Authz<'a> {
    session: &'a Arc<Session>,
    user: &'a crate::auth::UserInfo,
    request: &'a RequestResource,
}

/// A violation (or a failure counted as one).
#[derive(Debug, Clone, PartialEq)]
struct Decision {
    message: String,
    /// `None`: an evaluation error (reason `Invalid`).
    reason: Option<String>,
    /// The index of the failed validation, if one failed.
    index: Option<usize>,
}

/// One evaluation's variables and base values.
struct Evaluation<'a> {
    policy: &'a Policy,
    base: Vec<(&'static str, Cel)>,
    authorizer: Option<Authz<'a>>,
    variables: Vec<Option<Result<Cel, String>>>,
}

impl<'a> Evaluation<'a> {
    fn new(policy: &'a Policy, input: &Input<'a>) -> Self {
        let base = vec![
            ("object", to_cel(input.object)),
            ("oldObject", to_cel(input.old_object)),
            ("request", to_cel(input.request)),
            ("params", to_cel(input.params)),
            ("namespaceObject", to_cel(input.namespace)),
        ];
        Evaluation {
            policy,
            base,
            authorizer: input.authorizer,
            variables: (0..policy.variables.len()).map(|_| None).collect(),
        }
    }

    /// Evaluates `e` (with the variables it needs, computed first).
    fn run(&mut self, e: &Expression) -> Result<Cel, String> {
        let program = e
            .program
            .as_ref()
            .map_err(|c| format!("compilation error: {c}"))?;
        let policy = self.policy;
        for &i in &e.needs {
            if self.variables[i].is_none() {
                let v = policy.variables[i].1.program.as_ref().map_err(Clone::clone);
                let result = match v {
                    Ok(p) => self.execute(p),
                    Err(c) => Err(c),
                };
                self.variables[i] = Some(result);
            }
            if let Some(Err(err)) = &self.variables[i] {
                return Err(format!(
                    "composited variable {:?} fails to evaluate: {err}",
                    policy.variables[i].0
                ));
            }
        }
        self.execute(program)
    }

    fn execute(&self, program: &Program) -> Result<Cel, String> {
        let mut ctx = Context::with_env(ENV.clone());
        for (name, value) in &self.base {
            ctx.add_variable_from_value(*name, value.clone());
        }
        if let Some(a) = &self.authorizer {
            for (name, value) in authorizer::variables(a.session, a.user, a.request) {
                ctx.add_variable_as_val(name, value);
            }
        }
        let vars = self
            .policy
            .variables
            .iter()
            .zip(&self.variables)
            .filter_map(|((name, _), v)| match v {
                Some(Ok(v)) => Some((Key::String(Arc::new(name.clone())), v.clone())),
                _ => None,
            })
            .collect::<HashMap<_, _>>();
        ctx.add_variable_from_value(
            "variables",
            Cel::Map(CelMap {
                map: Arc::new(vars),
            }),
        );
        program.execute(&ctx).map_err(|e| match e {
            // A library function's error is its message, as cel-go's.
            cel::ExecutionError::FunctionError { message, .. } => message,
            other => other.to_string(),
        })
    }
}

/// What one evaluation of a policy found.
#[derive(Debug, Default)]
struct Outcome {
    /// The violations (match conditions, validations, audit annotation errors).
    decisions: Vec<Decision>,
    /// The audit annotations (`<policy>/<key>`, value).
    annotations: Vec<(String, String)>,
}

/// Upstream's `validator.Validate`: the violations and audit annotations of one evaluation.
/// It has no effects: an evaluation may be repeated (see [`Session::resolve`]).
fn evaluate(policy: &Policy, input: &Input<'_>) -> Outcome {
    let mut ev = Evaluation::new(policy, input);
    let error = |message: String| Decision {
        message,
        reason: None,
        index: None,
    };
    // Match conditions: one false skips; otherwise errors follow failurePolicy.
    let mut errors = Vec::new();
    for (_, c) in &policy.match_conditions {
        match ev.run(c) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => return Outcome::default(),
            Ok(other) => errors.push(format!(
                "expression '{}' resulted in error: no such overload: {:?} is not a bool",
                c.source,
                other.type_of()
            )),
            Err(e) => errors.push(format!("expression '{}' resulted in error: {e}", c.source)),
        }
    }
    if !errors.is_empty() {
        if !policy.fail {
            return Outcome::default();
        }
        let message = if errors.len() == 1 {
            errors.concat()
        } else {
            format!("[{}]", errors.join(", "))
        };
        return Outcome {
            decisions: vec![error(message)],
            annotations: Vec::new(),
        };
    }
    let mut out = Vec::new();
    let mut annotations = Vec::new();
    for (index, v) in policy.validations.iter().enumerate() {
        match ev.run(&v.expression) {
            Ok(Cel::Bool(true)) => {}
            Ok(_) => {
                let from_expression = v
                    .message_expression
                    .as_ref()
                    .and_then(|m| match ev.run(m) {
                        Ok(Cel::String(s)) => Some(s.trim().to_string()),
                        _ => None,
                    })
                    .filter(|s| !s.is_empty() && s.len() <= 5 * 1024 && !s.contains('\n'));
                let message = from_expression
                    .or_else(|| Some(v.message.trim().to_string()).filter(|m| !m.is_empty()))
                    .unwrap_or_else(|| {
                        format!("failed expression: {}", v.expression.source.trim())
                    });
                out.push(Decision {
                    message,
                    reason: Some(v.reason.clone().unwrap_or_else(|| "Invalid".into())),
                    index: Some(index),
                });
            }
            Err(e) if policy.fail => out.push(error(format!(
                "expression '{}' resulted in error: {e}",
                v.expression.source
            ))),
            Err(_) => {}
        }
    }
    for (key, a) in &policy.audit_annotations {
        let failure = match ev.run(a) {
            Ok(Cel::String(value)) => {
                annotations.push((format!("{}/{key}", policy.name), value.to_string()));
                None
            }
            Ok(Cel::Null) => None,
            Ok(other) => Some(format!(
                "valueExpression '{}' resulted in unsupported return type: {:?}. Return type \
                 must be either string or null.",
                a.source,
                other.type_of()
            )),
            Err(e) => Some(format!("expression '{}' resulted in error: {e}", a.source)),
        };
        if let Some(f) = failure {
            tracing::debug!(policy = %policy.name, key, "audit annotation failed");
            if policy.fail {
                out.push(error(f));
            }
        }
    }
    Outcome {
        decisions: out,
        annotations,
    }
}

/// A violation to deny with.
struct Violation {
    policy: String,
    binding: Option<String>,
    decision: Decision,
}

fn config_error(
    denied: &mut Vec<Violation>,
    policy: &Policy,
    binding: Option<&Binding>,
    message: String,
) {
    if !policy.fail {
        tracing::debug!(policy = %policy.name, %message, "policy configuration error ignored");
        return;
    }
    denied.push(Violation {
        policy: policy.name.clone(),
        binding: binding.map(|b| b.name.clone()),
        decision: Decision {
            message,
            reason: None,
            index: None,
        },
    });
}

/// The binding's `validationActions` on one violation.
fn act(
    req: &Request,
    policy: &Policy,
    binding: &Binding,
    decision: Decision,
    denied: &mut Vec<Violation>,
    audits: &mut Vec<Value>,
) {
    for action in &binding.actions {
        match action.as_str() {
            "Deny" => denied.push(Violation {
                policy: policy.name.clone(),
                binding: Some(binding.name.clone()),
                decision: decision.clone(),
            }),
            "Warn" => req
                .warnings
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!(
                    "Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {}",
                    policy.name, binding.name, decision.message
                )),
            "Audit" => audits.push(json!({
                "message": decision.message,
                "policy": policy.name,
                "binding": binding.name,
                "expressionIndex": decision.index.unwrap_or(0),
                "validationActions": binding.actions,
            })),
            _ => {}
        }
    }
}

/// Upstream's answer to a denial: `admission.NewForbidden` with the violation's reason and
/// its code, the inner message as a cause.
fn denial(attrs: &Attrs<'_>, v: Violation) -> ApiError {
    let inner = match &v.binding {
        Some(b) => format!(
            "ValidatingAdmissionPolicy '{}' with binding '{b}' denied request: {}",
            v.policy, v.decision.message
        ),
        None => format!(
            "ValidatingAdmissionPolicy '{}' denied request: {}",
            v.policy, v.decision.message
        ),
    };
    let mut name = attrs.name();
    if name.is_empty() {
        name = attrs
            .obj
            .or(attrs.old)
            .map(|o| object_meta_str(o, "name").to_string())
            .unwrap_or_default();
    }
    let resource = qualified(attrs.info);
    let message = if name.is_empty() {
        format!("{resource} is forbidden: {inner}")
    } else {
        format!("{resource} {name:?} is forbidden: {inner}")
    };
    let (reason, code) = match v.decision.reason.as_deref() {
        Some("Forbidden") => ("Forbidden", 403),
        Some("Unauthorized") => ("Unauthorized", 401),
        Some("RequestEntityTooLarge") => ("RequestEntityTooLarge", 413),
        _ => ("Invalid", 422),
    };
    let mut details =
        json!({"name": name, "kind": attrs.info.plural, "causes": [{"message": inner}]});
    if !attrs.info.group.is_empty() {
        details["group"] = json!(attrs.info.group);
    }
    ApiError {
        details: Some(details),
        ..ApiError::new(code, reason, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: Value) -> Policy {
        Policy::compile(&json!({"metadata": {"name": "p"}, "spec": spec}))
    }

    fn input<'a>(object: &'a Value, params: &'a Value) -> Input<'a> {
        Input {
            object,
            old_object: &Value::Null,
            request: &Value::Null,
            params,
            namespace: &Value::Null,
            authorizer: None,
        }
    }

    #[test]
    fn a_failed_validation_has_upstreams_message_and_reason() {
        let p = policy(json!({"validations": [
            {"expression": "object.spec.replicas <= 5"},
            {"expression": "object.spec.replicas <= 4", "message": "too many", "reason": "Forbidden"},
            {"expression": "object.spec.replicas <= 3", "message": "m",
             "messageExpression": "'replicas: ' + string(object.spec.replicas)"},
        ]}));
        let obj = json!({"spec": {"replicas": 6}});
        let d = evaluate(&p, &input(&obj, &Value::Null)).decisions;
        assert_eq!(
            d,
            vec![
                Decision {
                    message: "failed expression: object.spec.replicas <= 5".into(),
                    reason: Some("Invalid".into()),
                    index: Some(0),
                },
                Decision {
                    message: "too many".into(),
                    reason: Some("Forbidden".into()),
                    index: Some(1),
                },
                Decision {
                    message: "replicas: 6".into(),
                    reason: Some("Invalid".into()),
                    index: Some(2),
                },
            ]
        );
        let ok = json!({"spec": {"replicas": 3}});
        assert!(evaluate(&p, &input(&ok, &Value::Null)).decisions.is_empty());
    }

    #[test]
    fn variables_are_computed_for_the_expressions_that_use_them() {
        let p = policy(json!({
            "variables": [
                {"name": "n", "expression": "object.spec.replicas"},
                {"name": "big", "expression": "variables.n > 5"},
                {"name": "broken", "expression": "object.nope.x"},
            ],
            "validations": [{"expression": "!variables.big"}],
        }));
        assert_eq!(p.validations[0].expression.needs, vec![0, 1]);
        let obj = json!({"spec": {"replicas": 6}});
        assert_eq!(evaluate(&p, &input(&obj, &Value::Null)).decisions.len(), 1);
        let obj = json!({"spec": {"replicas": 2}});
        assert!(
            evaluate(&p, &input(&obj, &Value::Null))
                .decisions
                .is_empty()
        );
    }

    #[test]
    fn match_conditions_skip_and_errors_follow_the_failure_policy() {
        let spec = |fp: &str| {
            json!({"failurePolicy": fp,
                "matchConditions": [{"name": "m", "expression": "object.metadata.name != 'skip'"}],
                "validations": [{"expression": "object.x == 1"}]})
        };
        let p = policy(spec("Fail"));
        let skip = json!({"metadata": {"name": "skip"}});
        assert!(
            evaluate(&p, &input(&skip, &Value::Null))
                .decisions
                .is_empty()
        );
        let other = json!({"metadata": {"name": "a"}, "x": 2});
        assert_eq!(
            evaluate(&p, &input(&other, &Value::Null)).decisions.len(),
            1
        );
        // `object.x` missing: an evaluation error, a violation only with `Fail`.
        let missing = json!({"metadata": {"name": "a"}});
        let d = evaluate(&p, &input(&missing, &Value::Null)).decisions;
        assert_eq!(d.len(), 1);
        assert!(
            d[0].message
                .starts_with("expression 'object.x == 1' resulted in error: "),
            "{d:?}"
        );
        assert_eq!(d[0].reason, None);
        let p = policy(spec("Ignore"));
        assert!(
            evaluate(&p, &input(&missing, &Value::Null))
                .decisions
                .is_empty()
        );
    }

    #[test]
    fn params_are_visible() {
        let p = policy(json!({
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "validations": [{"expression": "object.spec.replicas <= int(params.data.max)"}],
        }));
        let params = json!({"data": {"max": "3"}});
        let obj = json!({"spec": {"replicas": 4}});
        assert_eq!(evaluate(&p, &input(&obj, &params)).decisions.len(), 1);
        let obj = json!({"spec": {"replicas": 3}});
        assert!(evaluate(&p, &input(&obj, &params)).decisions.is_empty());
    }

    #[test]
    fn undeclared_references_do_not_compile() {
        let e = compile("objekt.x == 1", &declared(VALIDATION_NAMES, false), &[]);
        assert_eq!(
            e.program.err().as_deref(),
            Some(
                "compilation failed: ERROR: <input>:1:1: undeclared reference to 'objekt' (in \
                 container '')\n | objekt.x == 1\n | ^"
            )
        );
        // `params` only with a paramKind.
        assert!(
            compile("params.x", &declared(VALIDATION_NAMES, false), &[])
                .program
                .is_err()
        );
        assert!(
            compile("params.x", &declared(VALIDATION_NAMES, true), &[])
                .program
                .is_ok()
        );
        // Comprehension variables are bound.
        let e = compile(
            "object.items.all(i, i.x > 0)",
            &declared(VALIDATION_NAMES, false),
            &[],
        );
        assert!(e.program.is_ok(), "{:?}", e.program.err());
        let e = compile("variables.nope", &declared(VALIDATION_NAMES, false), &[]);
        assert_eq!(
            e.program.err().as_deref(),
            Some(
                "compilation failed: ERROR: <input>:1:10: undefined field 'nope'\n | \
                 variables.nope\n | .........^"
            )
        );
    }
}
