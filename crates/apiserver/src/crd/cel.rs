//! `x-kubernetes-validations`: CEL rules on custom resources, with the `cel` crate.
//!
//! - [`check_schema`] is what the CRD's own validation runs (create and update of a CRD):
//!   every rule must be well-formed (`rule` present, `message` one line, `reason` one of
//!   upstream's four) and compile. A rule compiles when it parses, references only `self`,
//!   `oldSelf`, its own comprehension variables and functions of Kubernetes' CEL environment
//!   (else upstream's `compilation failed: ERROR: <input>:L:C: undeclared reference to 'x'
//!   (in container '')` with cel-go's source line and caret), and selects from `self` only
//!   properties its schema declares (`undefined field 'x'`, see [`typed::undefined_field`]).
//!   Then [`check`] type-checks it with `self`/`oldSelf` typed by the schema (cel-go's
//!   `found no matching overload for '_>_' applied to '(int, string)'`, ...), conservatively
//!   (what it cannot type is `dyn` and accepted), and requires a bool result (a message
//!   expression: a string) in upstream's words. Parse errors are cel-rust's words. Finally
//!   [`cost`] estimates each rule's worst-case cost as cel-go does, times the number of
//!   times the rule can run in one object (the product of the enclosing lists' `maxItems`
//!   and maps' `maxProperties`, or as many of the node as fit in a 3 MiB request): over
//!   10M it is upstream's `Forbidden: estimated rule cost exceeds budget by factor of ...`,
//!   and over 100M for the whole schema the `contributed to ...` causes and the schema's
//!   own `Forbidden`. The estimate is an under-estimate where unsure (see [`cost`]).
//! - [`validate`] evaluates the rules against a custom resource on create (`old` = `None`) and
//!   on update/patch/apply (`old` = the stored object): `self` is the value at the rule's
//!   schema node, typed by the schema ([`typed`]: `date-time`/`date` strings are timestamps,
//!   `duration` strings durations, `byte` strings bytes, numbers doubles, property names
//!   escaped), `oldSelf` the correlated old value (by property name, map key, or
//!   `x-kubernetes-list-map-keys` for `map` lists). Transition rules (rules that mention
//!   `oldSelf`) run only when an old value exists, except with `optionalOldSelf: true`, where
//!   they also run on create and `oldSelf` is `optional.of(old)` or `optional.none()`.
//!   Failures are upstream's field errors: `spec: Invalid value: "object": <message>` (or
//!   `failed rule: <rule>`), `reason` and `fieldPath` honoured, `messageExpression` evaluated
//!   (falling back to the message); an evaluation error is `<error> evaluating rule: <rule>`
//!   with cel-go's words ([`error_text`]).
//!
//! Library coverage: the CEL standard library, macros, `matches`, timestamps and durations,
//! optional values (`?.`, `[?]`, `optional.*`, `hasValue`, `value`, `orValue`, `or`), the
//! `cel` crate's string (`lowerAscii`, `split`, `join`, `format`, ...), list and math
//! extensions, and Kubernetes' libraries: [`library`] (`quantity`, `ip`, `cidr`, `isSorted`,
//! `sum`, `min`, `max`, `indexOf`/`lastIndexOf` on lists, `sets.*`, regex `find`/`findAll`,
//! `semver`) and [`url`]. A function this environment declares but does not implement fails
//! its evaluation with an `Invalid` error saying so — never a silent pass. Not reproduced: the
//! equality of `set`/`map` lists ignoring order, `x-kubernetes-int-or-string` and
//! preserved-unknown values as their own CEL types (they are plain values). The runtime cost
//! limits (1M per evaluation, 10M per object) are approximated: cel-rust counts no cost, so
//! each evaluation is charged beforehand a lower bound of its cel-go cost computed from the
//! values' actual sizes ([`cost::runtime_lower_bound`]); over the limit it is upstream's
//! `call cost exceeds limit` or `running out of cost budget` error, and no further rule runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::types::CelOptional;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program, Value as Cel};
use serde_json::Value;

use crate::status::Cause;

mod check;
mod cost;
mod library;
pub(crate) use library::opaque_val;
mod typed;

pub(crate) use typed::RESERVED;
mod url;

/// The environment rules are compiled and run in.
pub(crate) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(environment()));

/// A new environment with [`ENV`]'s functions, for environments that add their own (the
/// admission policies' `authorizer` library).
pub(crate) fn environment() -> Env {
    let mut env = Env::stdlib();
    for ext in [
        cel::extensions::strings as fn(&mut Env) -> Result<(), cel::DeclarationError>,
        cel::extensions::lists,
        cel::extensions::math,
        cel::extensions::encoders,
        library::register,
        url::register,
    ] {
        if let Err(e) = env.add_extension(ext) {
            tracing::warn!(error = %e, "CEL extension not loaded");
        }
    }
    env
}

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
    "strings.quote",
    "lists.range",
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

/// CEL's type names, which are values too (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
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
        .map_err(|e| parse_errors(source, &e))
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

/// cel-rust's parse errors in cel-go's frame: `ERROR: <input>:L:C: <message>`, the source
/// line and a caret, one error a line group (the messages are cel-rust's words).
fn parse_errors(source: &str, errors: &cel::ParseErrors) -> String {
    errors
        .errors
        .iter()
        .map(|e| {
            let (line, col) = e.pos;
            let start = usize::try_from(line - 1)
                .ok()
                .and_then(|l| {
                    if l == 0 {
                        return Some(0);
                    }
                    source.match_indices('\n').nth(l - 1).map(|(i, _)| i + 1)
                })
                .filter(|_| col >= 1);
            match start {
                Some(start) => {
                    let col = usize::try_from(col - 1).unwrap_or(0);
                    let offset = source[start..]
                        .char_indices()
                        .nth(col)
                        .map_or(source.len(), |(i, _)| start + i);
                    typed::at(source, offset, &e.msg)
                }
                None => e.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
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
                    && !TYPE_NAMES.contains(&name.as_str())
                    && !scope.iter().any(|s| s == name) =>
            {
                *found = Some((false, name.clone()));
            }
            Expr::Call(call) => {
                // `sets.contains(..)`, `ip.isCanonical(..)`: a namespaced function.
                let namespaced = call.target.as_ref().is_some_and(|t| {
                    matches!(&t.expr, Expr::Ident(n)
                        if KNOWN_FUNCTIONS.contains(&format!("{n}.{}", call.func_name).as_str()))
                });
                // Operators (`_+_`, `-_`, `!_`) and the parser's macro helpers (`@in`,
                // `math.@max` of `math.greatest`).
                let known = call.func_name.starts_with(['_', '@', '!', '-'])
                    || call.func_name.contains(".@")
                    || namespaced
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
    // Where the name first appears, as cel-go shows it.
    let offset = find_word(source, &name).unwrap_or(0);
    Some(typed::at(
        source,
        offset,
        &format!("undeclared reference to '{name}' (in container '')"),
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
    let mut total = cost::Total::default();
    check_node(schema, path, true, Some(1), &mut total, out);
    total.finish(path, out);
}

/// The CRD-side checks of the rules at `schema` and below; `cardinality` is how many times
/// the node can occur in one object (`None`: unbounded, an enclosing list or map has no
/// `maxItems`/`maxProperties`), `total` the estimated cost of the schema's rules so far.
fn check_node(
    schema: &Value,
    path: &str,
    root: bool,
    cardinality: Option<u64>,
    total: &mut cost::Total,
    out: &mut Vec<Cause>,
) {
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
        let compiled = compile(text);
        let self_ty = check::schema_type(schema, root);
        let optional_old_self = rule.get("optionalOldSelf").and_then(Value::as_bool) == Some(true);
        // A compilation error (parse, undeclared reference, undefined field, type) is
        // `compilation failed: <cel-go's errors>`; a well-typed rule of another result type
        // is upstream's bare `cel expression must evaluate to a bool`.
        let error = match &compiled.program {
            Ok(p) => typed::undefined_field(p, schema, root, text)
                .map(|e| format!("compilation failed: {e}"))
                .or_else(|| {
                    check::check(p, text, &self_ty, optional_old_self, check::Want::Bool)
                        .map(|f| f.detail("compilation failed: "))
                }),
            Err(e) => Some(format!("compilation failed: {e}")),
        };
        let compiled_ok = match (&compiled.program, &error) {
            (Ok(p), None) => Some(p),
            _ => None,
        };
        if let Some(e) = error {
            out.push(Cause {
                reason: "FieldValueInvalid",
                message: format!("Invalid value: {}: {e}", rule_repr(rule)),
                field: format!("{at}.rule"),
            });
        }
        // The estimated cost of a rule that compiles, times the number of times it can run
        // in one object.
        if let Some(p) = compiled_ok {
            let times = cardinality.unwrap_or_else(|| cost::unbounded_cardinality(schema, root));
            let estimated = cost::estimate(p.expression(), schema, root).saturating_mul(times);
            out.extend(cost::over_expression_limit(
                "estimated rule cost",
                estimated,
                format!("{at}.rule"),
            ));
            total.observe(format!("{at}.rule"), estimated);
        }
        if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str)
            && !expr.is_empty()
        {
            let message_program = compile(expr);
            let error = match &message_program.program {
                Ok(p) => check::check(p, expr, &self_ty, optional_old_self, check::Want::String)
                    .map(|f| f.detail("messageExpression compilation failed: ")),
                Err(e) => Some(format!("messageExpression compilation failed: {e}")),
            };
            if let Some(e) = error {
                out.push(Cause {
                    reason: "FieldValueInvalid",
                    message: format!("Invalid value: {}: {e}", rule_repr(rule)),
                    field: format!("{at}.messageExpression"),
                });
            } else if let (Some(_), Ok(p)) = (compiled_ok, &message_program.program) {
                // Upstream does not multiply a message expression's cost by the cardinality.
                let estimated = cost::estimate(p.expression(), schema, root);
                out.extend(cost::over_expression_limit(
                    "estimated messageExpression cost",
                    estimated,
                    format!("{at}.messageExpression"),
                ));
                total.observe(format!("{at}.messageExpression"), estimated);
            }
        }
    }
    // Children occur as many times as this node, times its `maxItems`/`maxProperties`.
    let child_cardinality = cardinality
        .zip(cost::child_factor(schema))
        .map(|(a, b)| a.saturating_mul(b));
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            let p = join_key(&format!("{path}.properties"), k);
            check_node(s, &p, false, child_cardinality, total, out);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        let p = format!("{path}.items");
        check_node(items, &p, false, child_cardinality, total, out);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        let p = format!("{path}.additionalProperties");
        check_node(extra, &p, false, child_cardinality, total, out);
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

/// What `oldSelf` is in an evaluation.
#[derive(Clone, Copy)]
enum OldSelf<'a> {
    /// The rule does not mention it.
    Absent,
    /// The correlated old value (a transition rule on update).
    Plain(&'a Value),
    /// `optionalOldSelf: true`: `optional.of(old)` or `optional.none()`.
    Optional(Option<&'a Value>),
}

/// An evaluation error as cel-go words it (what upstream puts before ` evaluating rule: `).
pub(crate) fn error_text(e: &cel::ExecutionError) -> String {
    use cel::ExecutionError as E;
    match e {
        E::FunctionError { message, .. } => message.clone(),
        E::NoSuchOverload(_) | E::ValuesNotComparable(..) => "no such overload".into(),
        E::NoSuchKey(key) => format!("no such key: {key}"),
        E::UndeclaredReference(name) => format!(
            "undeclared reference to '{name}': rk3s does not implement this function of the \
             Kubernetes CEL library"
        ),
        E::DivisionByZero(_) => "division by zero".into(),
        E::RemainderByZero(_) => "modulus by zero".into(),
        other => other.to_string(),
    }
}

/// Evaluates `program` with `self` (and `oldSelf`), typed by `schema`.
fn run(program: &Program, schema: &Value, new: &Value, old: OldSelf<'_>) -> Result<Cel, String> {
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_variable_from_value("self", typed::to_typed(new, schema));
    match old {
        OldSelf::Absent => {}
        OldSelf::Plain(old) => ctx.add_variable_from_value("oldSelf", typed::to_typed(old, schema)),
        OldSelf::Optional(old) => {
            let value = match old {
                Some(old) => {
                    let inner: Box<dyn cel::common::value::Val> = typed::to_typed(old, schema)
                        .try_into()
                        .map_err(|e| error_text(&e))?;
                    CelOptional::of(inner)
                }
                None => CelOptional::none(),
            };
            ctx.add_variable_as_val("oldSelf", Box::new(value));
        }
    }
    program.execute(&ctx).map_err(|e| error_text(&e))
}

/// Evaluates the CEL rules of `schema` against `new` (and, on update, `old`).
pub(crate) fn validate(schema: &Value, new: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let mut budget = Budget {
        remaining: cost::RUNTIME_CEL_COST_BUDGET,
        exhausted: false,
    };
    walk(schema, new, old, "", true, &mut budget, &mut out);
    out
}

/// What is left of upstream's runtime cost budget of one object; once exhausted (or a
/// rule over the per-call limit), no further rule runs.
struct Budget {
    remaining: u64,
    exhausted: bool,
}

fn walk(
    schema: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    budget: &mut Budget,
    out: &mut Vec<Cause>,
) {
    if v.is_null() || budget.exhausted {
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    if !rules(schema).is_empty() && budget.remaining == 0 {
        out.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {ty:?}: {OUT_OF_BUDGET}"),
            field: if path.is_empty() { "<root>" } else { path }.to_string(),
        });
        budget.exhausted = true;
        return;
    }
    for rule in rules(schema) {
        evaluate(schema, rule, v, old, path, root, budget, out);
        if budget.exhausted {
            return;
        }
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
                    walk(s, child, old_child, &p, false, budget, out);
                } else if let Some(s) = extra {
                    walk(s, child, old_child, &join_key(path, k), false, budget, out);
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
                    budget,
                    out,
                );
            }
        }
        _ => {}
    }
}

const OUT_OF_BUDGET: &str =
    "validation failed due to running out of cost budget, no further validation rules will be run";

#[allow(clippy::too_many_arguments)]
fn evaluate(
    schema: &Value,
    rule: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    budget: &mut Budget,
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
    let optional_old = rule.get("optionalOldSelf").and_then(Value::as_bool) == Some(true);
    // Ratcheting: a rule without `oldSelf` is not evaluated again on an unchanged value.
    if !compiled.uses_old_self && old == Some(v) {
        return;
    }
    let old_self = match (compiled.uses_old_self, optional_old, old) {
        (false, _, _) => OldSelf::Absent,
        (true, true, old) => OldSelf::Optional(old),
        (true, false, Some(old)) => OldSelf::Plain(old),
        // A transition rule runs only on updates with a correlated old value.
        (true, false, None) => return,
    };
    // cel-rust does not count costs: what the evaluation costs at least in cel-go is charged
    // before it runs, against the per-call limit and the object's budget.
    let old_value = match old_self {
        OldSelf::Plain(o) => Some(o),
        _ => None,
    };
    let spent = cost::runtime_lower_bound(program.expression(), schema, root, v, old_value);
    if spent > cost::PER_CALL_LIMIT || spent > budget.remaining {
        // cel-go stops at the limit, having spent it.
        let detail = if budget.remaining < cost::PER_CALL_LIMIT || spent <= cost::PER_CALL_LIMIT {
            OUT_OF_BUDGET.to_string()
        } else {
            format!(
                "'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: {error_string}"
            )
        };
        out.push(Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {ty:?}: {detail}"),
            field: here.to_string(),
        });
        budget.exhausted = true;
        return;
    }
    budget.remaining -= spent;
    let result = run(program, schema, v, old_self);
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
                && let Ok(Cel::String(s)) = run(p, schema, v, old_self)
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
            let detail = if e.starts_with("no such overload") {
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

    use crate::status::cause_lines_with_reasons as messages;

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
    fn library_calls_pass_fail_and_error_like_upstream() {
        let obj = |size: &str| json!({"spec": {"replicas": 1, "maxReplicas": 1, "name": "a", "size": size}});
        assert!(validate(&schema(), &obj("1Mi"), None).is_empty());
        assert_eq!(
            messages(&validate(&schema(), &obj("2Gi"), None)),
            [
                "FieldValueInvalid spec.size: Invalid value: \"string\": failed rule: quantity(self).isLessThan(quantity('1Gi'))"
            ]
        );
        assert_eq!(
            messages(&validate(&schema(), &obj("x"), None)),
            [
                "FieldValueInvalid spec.size: Invalid value: \"string\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' evaluating rule: quantity(self).isLessThan(quantity('1Gi'))"
            ]
        );
    }

    /// Evaluates `rule` with `self` = `value` (typed by `schema`).
    fn eval_with(rule: &str, schema: &Value, value: &Value) -> Result<Cel, String> {
        let c = compile(rule);
        let p = c.program.as_ref().map_err(|e| e.clone())?;
        run(p, schema, value, OldSelf::Absent)
    }

    fn eval(rule: &str) -> Result<Cel, String> {
        eval_with(rule, &json!({}), &json!({}))
    }

    /// Unary minus, `math.greatest`/`least` (the parser's `math.@max`/`@min`),
    /// `strings.quote`, `lists.range` and type names as values compile (type checker
    /// included) and hold.
    #[test]
    fn operators_namespaced_functions_and_type_names() {
        let rules = [
            "-(self.a + 2) == -3",
            "math.greatest(self.a, 2) == 2",
            "math.least([self.a, 2]) == 1",
            "strings.quote('a') == '\"a\"'",
            "lists.range(3) == [0, 1, 2]",
            "type(self.a) == int",
            "type('a') == string && type(self) != string",
        ];
        let schema = json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "x-kubernetes-validations": rules.iter().map(|r| json!({"rule": r})).collect::<Vec<_>>(),
        });
        let mut causes = Vec::new();
        check_schema(&schema, "openAPIV3Schema", &mut causes);
        assert!(
            causes.is_empty(),
            "{:?}",
            crate::status::cause_lines(&causes)
        );
        assert!(validate(&schema, &json!({"a": 1}), None).is_empty());
        // The first three rules fail for 5.
        assert_eq!(validate(&schema, &json!({"a": 5}), None).len(), 3);
    }

    fn all_true(rules: &[&str]) {
        for rule in rules {
            assert_eq!(eval(rule), Ok(Cel::Bool(true)), "{rule}");
        }
    }

    #[test]
    fn quantity_library() {
        all_true(&[
            "quantity('1Gi').isGreaterThan(quantity('1G'))",
            "quantity('200M').compareTo(quantity('0.2G')) == 0",
            "quantity('50M').compareTo(quantity('50Mi')) == -1",
            "quantity('50Mi').compareTo(quantity('50M')) == 1",
            "quantity('50M').isLessThan(quantity('100M'))",
            "quantity('1000m') == quantity('1')",
            "!quantity('1.5').isInteger() && quantity('2k').isInteger()",
            "quantity('2k').asInteger() == 2000",
            "quantity('500m').asApproximateFloat() == 0.5",
            "quantity('-1').sign() == -1 && sign(quantity('0')) == 0 && quantity('3m').sign() == 1",
            "quantity('1Gi').add(quantity('1Gi')) == quantity('2Gi')",
            "quantity('1').add(1) == quantity('2') && quantity('1').sub(2) == quantity('-1')",
            "quantity('1').sub(quantity('500m')) == quantity('500m')",
            "isQuantity('1.5Gi') && !isQuantity('x') && !isQuantity('1Gb')",
        ]);
        assert_eq!(
            eval("quantity('x')"),
            Err("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".into())
        );
        assert_eq!(
            eval("quantity('1.5').asInteger() == 1"),
            Err("cannot convert value to integer".into())
        );
    }

    #[test]
    fn url_library() {
        all_true(&[
            "url('https://example.com:80/').getHost() == 'example.com:80'",
            "url('https://example.com:80/').getHostname() == 'example.com'",
            "url('https://example.com:80/').getPort() == '80'",
            "url('https://example.com/').getPort() == ''",
            "url('https://[::1]:80/').getHostname() == '::1'",
            "url('/path').getScheme() == '' && url('/path').getHost() == ''",
            "url('https://example.com/path with spaces/').getEscapedPath() == '/path%20with%20spaces/'",
            "url('https://example.com').getEscapedPath() == ''",
            "url('https://example.com/path?k1=a&k2=b&k2=c').getQuery() == {'k1': ['a'], 'k2': ['b', 'c']}",
            "url('https://example.com/path?key with spaces=value with spaces').getQuery()['key with spaces'] == ['value with spaces']",
            "url('https://example.com/path?').getQuery() == {}",
            "isURL('https://user:pass@example.com/#frag') && isURL('/absolute-path')",
            "!isURL('example.com') && !isURL('https://exa mple.com/') && !isURL('')",
            "url('HTTPS://example.com').getScheme() == 'https'",
        ]);
        assert_eq!(
            eval("url('../relative')"),
            Err("URL parse error during conversion from string: parse \"../relative\": invalid URI for request".into())
        );
    }

    #[test]
    fn ip_and_cidr_libraries() {
        all_true(&[
            "ip('192.168.0.1').family() == 4 && ip('::1').family() == 6",
            "ip('127.0.0.1').isLoopback() && ip('::1').isLoopback() && !ip('10.0.0.1').isLoopback()",
            "ip('0.0.0.0').isUnspecified() && ip('::').isUnspecified()",
            "ip('224.0.0.1').isLinkLocalMulticast() && ip('ff02::1').isLinkLocalMulticast()",
            "ip('169.254.1.1').isLinkLocalUnicast() && ip('fe80::1').isLinkLocalUnicast()",
            "ip('10.0.0.1').isGlobalUnicast() && ip('2001:db8::1').isGlobalUnicast()",
            "!ip('255.255.255.255').isGlobalUnicast() && !ip('224.0.0.1').isGlobalUnicast()",
            "ip.isCanonical('2001:db8::1') && !ip.isCanonical('2001:DB8::1') && !ip.isCanonical('2001:db8:0:0:0:0:0:1')",
            "string(ip('2001:db8:0::1')) == '2001:db8::1'",
            "ip('10.0.0.1') == ip('10.0.0.1') && ip('10.0.0.1') != ip('10.0.0.2')",
            "isIP('1.2.3.4') && !isIP('1.2.3') && !isIP('fe80::1%eth0') && !isIP('::ffff:1.2.3.4')",
            "cidr('10.0.0.0/8').containsIP('10.1.2.3') && !cidr('10.0.0.0/8').containsIP(ip('11.0.0.1'))",
            "!cidr('10.0.0.0/8').containsIP('::1')",
            "cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16') && !cidr('10.0.0.0/16').containsCIDR(cidr('10.0.0.0/8'))",
            "cidr('10.1.2.3/8').masked() == cidr('10.0.0.0/8') && cidr('10.1.2.3/8').ip() == ip('10.1.2.3')",
            "cidr('::/0').prefixLength() == 0 && cidr('2001:db8::/32').containsIP('2001:db8::1')",
            "string(cidr('10.1.2.3/8')) == '10.1.2.3/8'",
            "isCIDR('10.0.0.0/8') && !isCIDR('10.0.0.0') && !isCIDR('10.0.0.0/33') && !isCIDR('10.0.0.0/08')",
        ]);
        assert_eq!(
            eval("ip('1.2.3')"),
            Err("IP Address \"1.2.3\" parse error during conversion from string: ParseAddr(\"1.2.3\"): IPv4 address too short".into())
        );
        assert_eq!(
            eval("ip('01.2.3.4')"),
            Err("IP Address \"01.2.3.4\" parse error during conversion from string: ParseAddr(\"01.2.3.4\"): IPv4 field has octet with leading zero".into())
        );
        assert_eq!(
            eval("ip('::ffff:1.2.3.4')"),
            Err("IPv4-mapped IPv6 address \"::ffff:1.2.3.4\" is not allowed".into())
        );
        assert_eq!(
            eval("ip('fe80::1%eth0')"),
            Err("IP address \"fe80::1%eth0\" with zone value is not allowed".into())
        );
        assert_eq!(
            eval("cidr('10.0.0.0/33')"),
            Err("network address parse error during conversion from string: network address parse error during conversion from string: netip.ParsePrefix(\"10.0.0.0/33\"): prefix length out of range".into())
        );
        assert_eq!(
            eval("cidr('10.0.0.0')"),
            Err("network address parse error during conversion from string: network address parse error during conversion from string: netip.ParsePrefix(\"10.0.0.0\"): no '/'".into())
        );
    }

    #[test]
    fn lists_sets_regex_and_format() {
        all_true(&[
            "[1, 2, 2, 3].isSorted() && !['b', 'a'].isSorted() && [].isSorted()",
            "[1, 2, 3].sum() == 6 && [1.5, 2.5].sum() == 4.0 && [].sum() == 0",
            "[duration('1s'), duration('2s')].sum() == duration('3s')",
            "[3, 1, 2].min() == 1 && [3, 1, 2].max() == 3 && ['b', 'c', 'a'].max() == 'c'",
            "[1, 2, 1].indexOf(1) == 0 && [1, 2, 1].lastIndexOf(1) == 2 && [1].indexOf(5) == -1",
            "'abcb'.indexOf('b') == 1 && 'abcb'.lastIndexOf('b') == 3",
            "sets.contains([1, 2, 3], [1, 2]) && !sets.contains([1], [2]) && sets.contains([1], [])",
            "sets.equivalent([1, 2], [2, 1, 1]) && !sets.equivalent([1], [1, 2])",
            "sets.intersects([1, 2], [2, 3]) && !sets.intersects([1], [2])",
            "'abc 123 def 456'.find('[0-9]+') == '123' && 'abc'.find('[0-9]+') == ''",
            "'a1b2c3'.findAll('[0-9]') == ['1', '2', '3'] && 'a1b2c3'.findAll('[0-9]', 2) == ['1', '2']",
            "'%s is %d'.format(['x', 1]) == 'x is 1'",
        ]);
        assert_eq!(eval("[].min()"), Err("min called on empty list".into()));
        assert_eq!(eval("[1, 'a'].isSorted()"), Err("no such overload".into()));
    }

    #[test]
    fn semver_library() {
        all_true(&[
            "semver('1.2.3').major() == 1 && semver('1.2.3').minor() == 2 && semver('1.2.3').patch() == 3",
            "semver('1.2.3-alpha').isLessThan(semver('1.2.3'))",
            "semver('1.10.0').isGreaterThan(semver('1.9.0'))",
            "semver('1.0.0-alpha.1').compareTo(semver('1.0.0-alpha.beta')) == -1",
            "semver('1.0.0+build.1') == semver('1.0.0')",
            "isSemver('1.2.3') && !isSemver('1.2') && !isSemver('v1.2.3') && isSemver('v1.2', true)",
            "semver('v01.2', true) == semver('1.2.0')",
        ]);
        assert_eq!(
            eval("semver('01.2.3')"),
            Err("Major number must not contain leading zeroes \"01\"".into())
        );
    }

    #[test]
    fn schema_formats_are_typed_values() {
        let schema = json!({"type": "object", "properties": {
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "grace": {"type": "string", "format": "duration"},
            "data": {"type": "string", "format": "byte"},
            "port": {"x-kubernetes-int-or-string": true},
            "x-y": {"type": "integer"},
            "namespace": {"type": "string"},
        }});
        let v = json!({"start": "2024-02-29T10:00:00Z", "end": "2024-02-29T12:30:00+01:00",
                       "day": "2024-03-01", "grace": "90m", "data": "aGk=", "port": "http",
                       "x-y": 3, "namespace": "ns"});
        for rule in [
            "self.end > self.start",
            "self.end - self.start == duration('1h30m')",
            "self.grace == duration('1h30m') && self.grace > duration('1h')",
            "self.day == timestamp('2024-03-01T00:00:00Z')",
            "self.start.getFullYear() == 2024",
            "self.data == b'hi'",
            "self.port == 'http'",
            "self.x__dash__y == 3 && self.__namespace__ == 'ns'",
        ] {
            assert_eq!(eval_with(rule, &schema, &v), Ok(Cel::Bool(true)), "{rule}");
        }
        let v = json!({"port": 8080, "grace": "3 days"});
        assert_eq!(
            eval_with(
                "self.port == 8080 && self.grace == duration('72h')",
                &schema,
                &v
            ),
            Ok(Cel::Bool(true))
        );
    }

    #[test]
    fn optional_old_self_runs_on_create_too() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"owner": {"type": "string", "x-kubernetes-validations": [
            {"rule": "oldSelf.hasValue() ? self == oldSelf.value() : self != 'root'",
             "optionalOldSelf": true, "message": "no"},
            {"rule": "oldSelf.orValue('') != 'x'", "optionalOldSelf": true},
        ]}}}}});
        let obj = |o: &str| json!({"spec": {"owner": o}});
        assert!(validate(&s, &obj("alice"), None).is_empty());
        assert_eq!(
            messages(&validate(&s, &obj("root"), None)),
            ["FieldValueInvalid spec.owner: Invalid value: \"string\": no"]
        );
        assert!(validate(&s, &obj("alice"), Some(&obj("alice"))).is_empty());
        assert_eq!(
            messages(&validate(&s, &obj("bob"), Some(&obj("x")))),
            [
                "FieldValueInvalid spec.owner: Invalid value: \"string\": no",
                "FieldValueInvalid spec.owner: Invalid value: \"string\": failed rule: oldSelf.orValue('') != 'x'",
            ]
        );
        // `?.` selections of absent fields are `optional.none()`.
        assert_eq!(
            eval_with("self.?missing.orValue('d') == 'd'", &json!({}), &json!({})),
            Ok(Cel::Bool(true))
        );
    }

    #[test]
    fn undefined_fields_do_not_compile() {
        let mut out = Vec::new();
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.nosuch == 1"},
            {"rule": "has(self.inner.gone)"},
            {"rule": "self.inner.a == 1 && self.free.anything == 1 && self.list.all(x, x.b == 1)"},
        ],
        "properties": {
            "inner": {"type": "object", "properties": {"a": {"type": "integer"}}},
            "free": {"type": "object", "additionalProperties": {"type": "integer"}},
            "list": {"type": "array", "items": {"type": "object"}},
        }}},
        "x-kubernetes-validations": [
            {"rule": "self.metadata.name.size() < 10 && self.kind == 'K' && self.spec.inner.a > 0"},
            {"rule": "self.spce.inner.a > 0"},
        ]});
        check_schema(&s, "spec.versions[0].schema.openAPIV3Schema", &mut out);
        let got = messages(&out);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].ends_with("compilation failed: ERROR: <input>:1:5: undefined field 'spce'\n | self.spce.inner.a > 0\n | ....^"), "{got:?}");
        assert!(got[1].ends_with("compilation failed: ERROR: <input>:1:5: undefined field 'nosuch'\n | self.nosuch == 1\n | ....^"), "{got:?}");
        assert!(got[2].contains("undefined field 'gone'"), "{got:?}");
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
        assert!(
            got[0].contains("\n | self.x >\n | ") && got[0].ends_with('^'),
            "{got:?}"
        );
        assert!(got[1].ends_with("compilation failed: ERROR: <input>:1:1: undeclared reference to 'foo' (in container '')\n | foo == 1\n | ^"), "{got:?}");
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
