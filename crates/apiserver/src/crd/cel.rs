//! `x-kubernetes-validations`: CEL rules on custom resources, with the `cel` crate.
//!
//! - [`check_schema`] is what the CRD's own validation runs (create and update of a CRD):
//!   every rule must be well-formed (`rule` present, `message` one line, `reason` one of
//!   upstream's four) and compile. A rule compiles when it parses and references only `self`,
//!   `oldSelf`, its own comprehension variables and functions of Kubernetes' CEL environment;
//!   anything else is upstream's `compilation failed: ERROR: <input>:L:C: undeclared reference
//!   to 'x' (in container '')`. There is no type checker: a rule that parses but is ill-typed
//!   (`self.name > 1`) is accepted here and fails when evaluated.
//! - [`validate`] evaluates the rules against a custom resource on create (`old` = `None`) and
//!   on update/patch/apply (`old` = the stored object): `self` is the value at the rule's
//!   schema node, `oldSelf` the correlated old value (by property name, map key, or
//!   `x-kubernetes-list-map-keys` for `map` lists). Transition rules (rules that mention
//!   `oldSelf`) run only when an old value exists (also with `optionalOldSelf`, whose
//!   `optional.none()` form is not supported). Failures are upstream's field errors:
//!   `spec: Invalid value: "object": <message>` (or `failed rule: <rule>`), `reason` and
//!   `fieldPath` honoured, `messageExpression` evaluated (falling back to the message).
//!
//! Library coverage: the CEL standard library, macros, `matches`, timestamps and durations,
//! and the `cel` crate's string (`lowerAscii`, `split`, `join`, ...), list and math
//! extensions. Kubernetes' own libraries (`quantity`, `url`, `ip`, `cidr`, `semver`, `format`,
//! `isSorted`, `sets.*`, `optional.*`, ...) are accepted at compile time but not implemented:
//! a rule that calls one fails its evaluation with an `Invalid` error saying so — never a
//! silent pass. Values are plain JSON (no `date-time` strings as timestamps, no
//! int-or-string typing); no cost estimation or runtime cost limit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program, Value as Cel};
use serde_json::Value;

use crate::status::Cause;

/// The environment rules are compiled and run in.
pub(crate) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    for ext in [
        cel::extensions::strings as fn(&mut Env) -> Result<(), cel::DeclarationError>,
        cel::extensions::lists,
        cel::extensions::math,
        cel::extensions::encoders,
    ] {
        if let Err(e) = env.add_extension(ext) {
            tracing::warn!(error = %e, "CEL extension not loaded");
        }
    }
    Arc::new(env)
});

/// The functions of upstream's CRD validation environment (the CEL standard library, the
/// cel-go extensions Kubernetes loads and Kubernetes' own libraries), plus the operators and
/// macro helpers the parser produces. A call to anything else does not compile.
const KNOWN_FUNCTIONS: &[&str] = &[
    // standard
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "duration",
    "timestamp",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    // strings extension
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "quote",
    "reverse",
    "format",
    // lists extension and Kubernetes' lists library
    "isSorted",
    "sum",
    "min",
    "max",
    "slice",
    "flatten",
    "distinct",
    "sort",
    "sortBy",
    "range",
    // regex
    "find",
    "findAll",
    // url
    "url",
    "isURL",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    // quantity
    "quantity",
    "isQuantity",
    "sign",
    "isGreaterThan",
    "isLessThan",
    "compareTo",
    "asApproximateFloat",
    "asInteger",
    "isInteger",
    "add",
    "sub",
    // ip / cidr
    "ip",
    "isIP",
    "cidr",
    "isCIDR",
    "family",
    "isUnspecified",
    "isLoopback",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "isGlobalUnicast",
    "ip.isCanonical",
    "containsIP",
    "containsCIDR",
    "prefixLength",
    "masked",
    // semver
    "semver",
    "isSemver",
    "major",
    "minor",
    "patch",
    // optional
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "orValue",
    "hasValue",
    "value",
    "or",
    // sets, math, encoders
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
    "math.greatest",
    "math.least",
    "math.ceil",
    "math.floor",
    "math.round",
    "math.trunc",
    "math.abs",
    "math.sign",
    "math.isInf",
    "math.isNaN",
    "math.isFinite",
    "math.bitAnd",
    "math.bitOr",
    "math.bitXor",
    "math.bitNot",
    "math.bitShiftLeft",
    "math.bitShiftRight",
    "base64.encode",
    "base64.decode",
];

/// Upstream's `reason`s.
const REASONS: &[&str] = &[
    "FieldValueDuplicate",
    "FieldValueForbidden",
    "FieldValueInvalid",
    "FieldValueRequired",
];

/// Compiled programs by source (rules are compiled once, not per request).
static PROGRAMS: LazyLock<Mutex<HashMap<String, Arc<Compiled>>>> = LazyLock::new(Default::default);

/// A compiled rule (or message expression).
struct Compiled {
    program: Result<Program, String>,
    uses_old_self: bool,
}

fn compile(source: &str) -> Arc<Compiled> {
    let mut cache = PROGRAMS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = cache.get(source) {
        return c.clone();
    }
    let program = ENV
        .compile(source)
        .map_err(|e| e.to_string())
        .and_then(|p| match undeclared(p.expression(), source) {
            Some(e) => Err(e),
            None => Ok(p),
        });
    let uses_old_self = program
        .as_ref()
        .is_ok_and(|p| p.references().has_variable("oldSelf"));
    let c = Arc::new(Compiled {
        program,
        uses_old_self,
    });
    if cache.len() > 4096 {
        cache.clear();
    }
    cache.insert(source.to_string(), c.clone());
    c
}

/// The first undeclared reference of `expr` as cel-go reports it, if any.
fn undeclared(expr: &IdedExpr, source: &str) -> Option<String> {
    fn walk(e: &IdedExpr, scope: &mut Vec<String>, found: &mut Option<(bool, String)>) {
        if found.is_some() {
            return;
        }
        match &e.expr {
            Expr::Ident(name)
                if !name.starts_with('@')
                    && !matches!(
                        name.as_str(),
                        "self" | "oldSelf" | "null" | "true" | "false"
                    )
                    && !scope.iter().any(|s| s == name) =>
            {
                *found = Some((false, name.clone()));
            }
            Expr::Call(call) => {
                let known = call.func_name.starts_with('_')
                    || call.func_name.starts_with('@')
                    || call.func_name.starts_with('!')
                    || KNOWN_FUNCTIONS.contains(&call.func_name.as_str());
                if !known {
                    *found = Some((true, call.func_name.clone()));
                    return;
                }
                if let Some(t) = &call.target {
                    // `optional.of(x)`, `math.greatest(..)`: a namespace, not a variable.
                    let namespaced = matches!(&t.expr, Expr::Ident(n)
                        if KNOWN_FUNCTIONS.contains(&format!("{n}.{}", call.func_name).as_str()));
                    if !namespaced {
                        walk(t, scope, found);
                    }
                }
                for a in &call.args {
                    walk(a, scope, found);
                }
            }
            Expr::Comprehension(c) => {
                walk(&c.iter_range, scope, found);
                walk(&c.accu_init, scope, found);
                let depth = scope.len();
                scope.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    scope.push(v.clone());
                }
                scope.push(c.accu_var.clone());
                walk(&c.loop_cond, scope, found);
                walk(&c.loop_step, scope, found);
                walk(&c.result, scope, found);
                scope.truncate(depth);
            }
            Expr::List(l) => l.elements.iter().for_each(|x| walk(x, scope, found)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => walk(&f.value, scope, found),
                        EntryExpr::MapEntry(me) => {
                            walk(&me.key, scope, found);
                            walk(&me.value, scope, found);
                        }
                    }
                }
            }
            Expr::Select(s) => walk(&s.operand, scope, found),
            _ => {}
        }
    }
    let mut found = None;
    walk(expr, &mut Vec::new(), &mut found);
    let (_, name) = found?;
    // Where the name first appears (1-based line and column, as cel-go prints them).
    let (mut line, mut col) = (1, 1);
    if let Some(at) = find_word(source, &name) {
        for c in source[..at].chars() {
            if c == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
    }
    Some(format!(
        "ERROR: <input>:{line}:{col}: undeclared reference to '{name}' (in container '')"
    ))
}

fn find_word(source: &str, word: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    source.match_indices(word).map(|(i, _)| i).find(|&i| {
        (i == 0 || !ident(bytes[i - 1])) && bytes.get(i + word.len()).is_none_or(|&b| !ident(b))
    })
}

fn join_key(path: &str, key: &str) -> String {
    format!("{path}[{key}]")
}

/// Go's `%#v` of an `apiextensions.ValidationRule`, as upstream's CRD errors show the rule.
fn rule_repr(rule: &Value) -> String {
    let s = |k: &str| rule.get(k).and_then(Value::as_str).unwrap_or("");
    let reason = match rule.get("reason").and_then(Value::as_str) {
        Some(r) => format!("(*apiextensions.FieldValueErrorReason)({r:?})"),
        None => "(*apiextensions.FieldValueErrorReason)(nil)".into(),
    };
    let optional = match rule.get("optionalOldSelf").and_then(Value::as_bool) {
        Some(b) => format!("(*bool)({b})"),
        None => "(*bool)(nil)".into(),
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{:?}, Message:{:?}, MessageExpression:{:?}, Reason:{reason}, FieldPath:{:?}, OptionalOldSelf:{optional}}}",
        s("rule"),
        s("message"),
        s("messageExpression"),
        s("fieldPath"),
    )
}

fn rules(schema: &Value) -> &[Value] {
    schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The CRD-side checks of every `x-kubernetes-validations` in `schema` (a CRD version's
/// `openAPIV3Schema`, at field path `path`).
pub(crate) fn check_schema(schema: &Value, path: &str, out: &mut Vec<Cause>) {
    for (i, rule) in rules(schema).iter().enumerate() {
        let at = format!("{path}.x-kubernetes-validations[{i}]");
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or("");
        let message = rule.get("message").and_then(Value::as_str).unwrap_or("");
        let has_newline = |s: &str| s.contains(['\n', '\r']);
        if text.trim().is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value: rule is not specified".into(),
                field: format!("{at}.rule"),
            });
            continue;
        } else if !message.is_empty() && message.trim().is_empty() {
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {message:?}: message must be non-empty if specified"
                ),
                field: format!("{at}.message"),
            });
        } else if has_newline(message.trim()) {
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {message:?}: message must not contain line breaks"
                ),
                field: format!("{at}.message"),
            });
        } else if has_newline(text.trim()) && message.trim().is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value: message must be specified if rule contains line breaks"
                    .into(),
                field: format!("{at}.message"),
            });
        }
        if let Some(reason) = rule.get("reason").and_then(Value::as_str)
            && !REASONS.contains(&reason)
        {
            out.push(Cause {
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {reason:?}: supported values: {}",
                    REASONS
                        .iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                field: format!("{at}.reason"),
            });
        }
        if let Some(fp) = rule.get("fieldPath").and_then(Value::as_str)
            && !fp.is_empty()
            && !fp.starts_with('.')
        {
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {fp:?}: fieldPath must be a valid path: expected [ or . but got: {}",
                    fp.chars().next().unwrap_or(' ')
                ),
                field: format!("{at}.fieldPath"),
            });
        }
        if let Err(e) = &compile(text).program {
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {}: compilation failed: {e}",
                    rule_repr(rule)
                ),
                field: format!("{at}.rule"),
            });
        }
        if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str)
            && !expr.is_empty()
            && let Err(e) = &compile(expr).program
        {
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!(
                    "Invalid value: {}: messageExpression compilation failed: {e}",
                    rule_repr(rule)
                ),
                field: format!("{at}.messageExpression"),
            });
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            check_schema(s, &join_key(&format!("{path}.properties"), k), out);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        check_schema(items, &format!("{path}.items"), out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        check_schema(extra, &format!("{path}.additionalProperties"), out);
    }
}

/// JSON → CEL: objects are maps with string keys, integers `int`, other numbers `double`.
pub(crate) fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => match n.as_u64() {
                Some(u) => Cel::UInt(u),
                None => Cel::Float(n.as_f64().unwrap_or(0.0)),
            },
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => Cel::Map(CelMap {
            map: Arc::new(
                m.iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

/// Evaluates `program` with `self` (and `oldSelf`).
fn run(program: &Program, new: &Value, old: Option<&Value>) -> Result<Cel, String> {
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_variable_from_value("self", to_cel(new));
    if let Some(old) = old {
        ctx.add_variable_from_value("oldSelf", to_cel(old));
    }
    program.execute(&ctx).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix("Undeclared reference to '") {
            Some(rest) => {
                let name = rest.trim_end_matches('\'');
                format!(
                    "undeclared reference to '{name}': rk3s does not implement this function \
                     of the Kubernetes CEL library"
                )
            }
            None => text,
        }
    })
}

/// Evaluates the CEL rules of `schema` against `new` (and, on update, `old`).
pub(crate) fn validate(schema: &Value, new: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    walk(schema, new, old, "", true, &mut out);
    out
}

fn walk(
    schema: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
) {
    if v.is_null() {
        return;
    }
    for rule in rules(schema) {
        evaluate(schema, rule, v, old, path, out);
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let old_child = old.and_then(|o| o.get(k));
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(s, child, old_child, &p, false, out);
                } else if let Some(s) = extra {
                    walk(s, child, old_child, &join_key(path, k), false, out);
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else {
                return;
            };
            for (i, item) in items.iter().enumerate() {
                // `map` lists correlate elements by their keys, `set` lists by value.
                let old_item = super::schema::correlated_item(schema, item, old);
                walk(
                    item_schema,
                    item,
                    old_item,
                    &format!("{path}[{i}]"),
                    false,
                    out,
                );
            }
        }
        _ => {}
    }
}

fn evaluate(
    schema: &Value,
    rule: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    out: &mut Vec<Cause>,
) {
    let text = rule
        .get("rule")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    if text.is_empty() {
        return;
    }
    let message = rule
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    let error_string = if message.is_empty() { text } else { message };
    let here = if path.is_empty() { "<root>" } else { path };
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let compiled = compile(text);
    let program = match &compiled.program {
        Ok(p) => p,
        Err(e) => {
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {ty:?}: compilation failed: {e}"),
                field: here.to_string(),
            });
            return;
        }
    };
    if compiled.uses_old_self && old.is_none() {
        return;
    }
    // Ratcheting: a rule without `oldSelf` is not evaluated again on an unchanged value.
    if !compiled.uses_old_self && old == Some(v) {
        return;
    }
    let result = run(program, v, if compiled.uses_old_self { old } else { None });
    match result {
        Ok(Cel::Bool(true)) => {}
        Ok(Cel::Bool(false)) => {
            let field = match rule.get("fieldPath").and_then(Value::as_str) {
                Some(fp) if !fp.is_empty() => {
                    let rel = fp.trim_start_matches('.');
                    if path.is_empty() {
                        rel.to_string()
                    } else {
                        format!("{path}.{rel}")
                    }
                }
                _ => here.to_string(),
            };
            let mut detail = if message.is_empty() {
                format!("failed rule: {error_string}")
            } else {
                message.to_string()
            };
            if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str)
                && !expr.is_empty()
                && let Ok(p) = &compile(expr).program
                && let Ok(Cel::String(s)) = run(p, v, old)
                && !s.trim().is_empty()
                && !s.contains(['\n', '\r'])
            {
                detail = s.trim().to_string();
            }
            let reason = rule
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("FieldValueInvalid");
            out.push(match reason {
                "FieldValueForbidden" => Cause {
                    reason: "FieldValueForbidden",
                    message: format!("Forbidden: {detail}"),
                    field,
                },
                "FieldValueRequired" => Cause {
                    reason: "FieldValueRequired",
                    message: format!("Required value: {detail}"),
                    field,
                },
                "FieldValueDuplicate" => Cause {
                    reason: "FieldValueDuplicate",
                    message: format!("Duplicate value: {ty:?}"),
                    field,
                },
                _ => Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Invalid value: {ty:?}: {detail}"),
                    field,
                },
            });
        }
        Ok(other) => out.push(Cause {
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {ty:?}: rule did not evaluate to a bool but to {:?} evaluating rule: {error_string}",
                other.type_of()
            ),
            field: here.to_string(),
        }),
        Err(e) => {
            let detail = if e.starts_with("No such overload") || e.contains("no such overload") {
                format!(
                    "'{e}': call arguments did not match a supported operator, function or macro signature for rule: {error_string}"
                )
            } else {
                format!("{e} evaluating rule: {error_string}")
            };
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {ty:?}: {detail}"),
                field: here.to_string(),
            });
        }
    }
}

/// Whether any rule of `schema` (at any depth) exists: custom resources without rules skip
/// the walk.
pub(crate) fn has_rules(schema: &Value) -> bool {
    fn any(s: &Value, seen: &mut HashSet<*const Value>) -> bool {
        if !seen.insert(s as *const Value) {
            return false;
        }
        !rules(s).is_empty()
            || s.get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| p.values().any(|c| any(c, seen)))
            || s.get("items").is_some_and(|c| any(c, seen))
            || s.get("additionalProperties")
                .filter(|a| a.is_object())
                .is_some_and(|c| any(c, seen))
    }
    any(schema, &mut HashSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        {"rule": "self.replicas <= self.maxReplicas",
                         "message": "replicas should be smaller than or equal to maxReplicas"},
                        {"rule": "self.name.startsWith('a')", "fieldPath": ".name",
                         "reason": "FieldValueForbidden"},
                        {"rule": "self.replicas >= oldSelf.replicas",
                         "messageExpression": "'replicas may not shrink below ' + string(oldSelf.replicas)"},
                    ],
                    "properties": {
                        "replicas": {"type": "integer"},
                        "maxReplicas": {"type": "integer"},
                        "name": {"type": "string"},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                  "x-kubernetes-list-map-keys": ["name"],
                                  "items": {"type": "object",
                                            "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "port is immutable"}],
                                            "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
                        "size": {"type": "string", "x-kubernetes-validations": [{"rule": "quantity(self).isLessThan(quantity('1Gi'))"}]},
                    },
                },
            },
        })
    }

    fn messages(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{} {}: {}", c.reason, c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_pass_and_fail_like_upstream() {
        let ok = json!({"spec": {"replicas": 1, "maxReplicas": 3, "name": "abc"}});
        assert!(validate(&schema(), &ok, None).is_empty());
        let bad = json!({"spec": {"replicas": 5, "maxReplicas": 3, "name": "zed"}});
        assert_eq!(
            messages(&validate(&schema(), &bad, None)),
            [
                "FieldValueInvalid spec: Invalid value: \"object\": replicas should be smaller than or equal to maxReplicas",
                "FieldValueForbidden spec.name: Forbidden: failed rule: self.name.startsWith('a')",
            ]
        );
    }

    #[test]
    fn transition_rules_need_the_old_value() {
        let old = json!({"spec": {"replicas": 3, "maxReplicas": 5, "name": "a",
                                  "ports": [{"name": "http", "port": 80}]}});
        let new = json!({"spec": {"replicas": 2, "maxReplicas": 5, "name": "a",
                                  "ports": [{"name": "http", "port": 81}, {"name": "new", "port": 1}]}});
        assert!(
            validate(&schema(), &new, None).is_empty(),
            "create skips them"
        );
        assert_eq!(
            messages(&validate(&schema(), &new, Some(&old))),
            [
                "FieldValueInvalid spec: Invalid value: \"object\": replicas may not shrink below 3",
                "FieldValueInvalid spec.ports[0]: Invalid value: \"object\": port is immutable",
            ]
        );
    }

    #[test]
    fn unsupported_library_functions_fail_loudly() {
        let obj = json!({"spec": {"replicas": 1, "maxReplicas": 1, "name": "a", "size": "1Mi"}});
        let got = messages(&validate(&schema(), &obj, None));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("FieldValueInvalid spec.size: Invalid value: \"string\": undeclared reference to 'quantity': rk3s does not implement"),
            "{got:?}"
        );
    }

    #[test]
    fn crd_checks_compile_rules() {
        let mut out = Vec::new();
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.x >"},
            {"rule": "foo == 1"},
            {"rule": "self.all(k, k.size() > 0)"},
            {"rule": ""},
            {"rule": "self.a\n== 1"},
            {"rule": "true", "reason": "Bogus"},
        ]}}});
        check_schema(&s, "spec.versions[0].schema.openAPIV3Schema", &mut out);
        let got = messages(&out);
        let at =
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations";
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got[0].starts_with(&format!("FieldValueInvalid {at}[0].rule: Invalid value: apiextensions.ValidationRule{{Rule:\"self.x >\", Message:\"\", MessageExpression:\"\", Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}}: compilation failed: ERROR: <input>:1:")), "{got:?}");
        assert!(got[1].ends_with("compilation failed: ERROR: <input>:1:1: undeclared reference to 'foo' (in container '')"), "{got:?}");
        assert_eq!(
            got[2],
            format!("FieldValueRequired {at}[3].rule: Required value: rule is not specified")
        );
        assert_eq!(
            got[3],
            format!(
                "FieldValueRequired {at}[4].message: Required value: message must be specified if rule contains line breaks"
            )
        );
        assert!(
            got[4].starts_with(&format!(
                "FieldValueNotSupported {at}[5].reason: Unsupported value: \"Bogus\""
            )),
            "{got:?}"
        );
    }
}
