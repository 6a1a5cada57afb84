//! Static cost estimation of `x-kubernetes-validations` rules, as the CRD's validation does.
//!
//! Upstream estimates every rule's worst-case cost with cel-go's estimator when a CRD is
//! created or updated, and refuses a rule whose cost, multiplied by the number of times the
//! rule can run in one object, exceeds [`STATIC_ESTIMATED_COST_LIMIT`], and a CRD whose rules
//! add up to more than [`STATIC_ESTIMATED_CRD_COST_LIMIT`]. What makes a rule expensive is the
//! size of what it iterates or scans: a list, map or string whose schema declares no
//! `maxItems`/`maxProperties`/`maxLength` is as large as fits in a request (3 MiB), and a rule
//! under lists without `maxItems` runs as many times as its node fits in a request.
//!
//! [`estimate`] walks cel-rust's AST with cel-go's cost model (identifiers and selections 1,
//! presence tests free as Kubernetes configures them,
//! comprehensions `range × (condition + step)`, `matches` `string length × 0.1 × regex length
//! × 0.25`, `contains`, comparisons and concatenations of strings by length, list and map
//! literals 10 and 30, ...) and sizes from the schema as upstream's declarations give them
//! (`maxLength × 4` characters, an enum's longest value, formats' fixed sizes).
//!
//! It is deliberately an under-estimate wherever it is not sure: a size it cannot tell is 0
//! (cel-go's is unbounded), a function it does not model costs only its arguments, and a
//! result whose size it cannot tell is 0. A rule this module refuses is refused upstream; a
//! rule upstream refuses for a reason not modelled here (an unknown size, a library function's
//! own cost) may be accepted.
//!
//! At runtime upstream counts what each evaluation actually costs (cel-go tracks it), stops an
//! evaluation past [`PER_CALL_LIMIT`] and an object's validation past
//! [`RUNTIME_CEL_COST_BUDGET`]. cel-rust tracks nothing, so [`runtime_lower_bound`] runs the
//! same estimator on the actual values: sizes are the values' own, and only what is sure to be
//! evaluated counts (the left operand of `&&`/`||`, the cheaper branch, one iteration of
//! `all`/`exists`), so that an object is never refused for a cost it would not reach upstream.

use std::collections::BTreeMap;
use std::rc::Rc;

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use serde_json::Value;

use super::typed::escape;
use crate::status::Cause;

/// Upstream's largest estimated cost of one expression (times its cardinality).
pub(super) const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// Upstream's largest estimated cost of all the rules of a CRD version's schema.
pub(super) const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// Upstream's cost limit of one evaluation of an expression.
pub(super) const PER_CALL_LIMIT: u64 = 1_000_000;
/// Upstream's cost budget of all the evaluations for one object.
pub(super) const RUNTIME_CEL_COST_BUDGET: u64 = 10_000_000;
/// The largest request the API server takes, which bounds what the schema leaves unbounded.
const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;
/// Cost per character of traversing a string.
const STRING_TRAVERSAL_COST_FACTOR: f64 = 0.1;
/// Cost per character of a regular expression.
const REGEX_STRING_LENGTH_COST_FACTOR: f64 = 0.25;
const LIST_CREATE_BASE_COST: u64 = 10;
const MAP_CREATE_BASE_COST: u64 = 30;
const STRUCT_CREATE_BASE_COST: u64 = 40;

/// The longest JSON string a request can hold (its quotes excluded).
const MAX_STRING: u64 = MAX_REQUEST_SIZE_BYTES - 2;
/// `"9999-12-31T23:59:59.999999999Z"`, quotes included.
const MAX_DATETIME_SIZE_JSON: u64 = 32;
const MAX_DURATION_SIZE_JSON: u64 = 32;
const JSON_DATE_SIZE: u64 = 12;
const MIN_DATETIME_SIZE_JSON: u64 = 21;
const MIN_DURATION_SIZE_JSON: u64 = 3;
const MIN_STRING_SIZE: u64 = 2;
const MIN_BOOL_SIZE: u64 = 4;
const MIN_NUMBER_SIZE: u64 = 1;

/// What the estimator knows of a value: its kind and the largest size (`size()`) it can have.
#[derive(Clone, Debug)]
enum Shape {
    /// Nothing known: size 0 (an under-estimate).
    Unknown,
    /// A fixed-size value (bool, number, timestamp, duration) with the size cel-go gives it.
    Scalar(u64),
    /// A string (characters) or bytes (bytes) of at most this size.
    Str(u64),
    /// A list of at most this many items.
    List(u64, Rc<Shape>),
    /// A map of at most this many entries (string keys of unknown size), with these values.
    Map(u64, Rc<Shape>),
    /// A schema object: its fields.
    Object(Rc<BTreeMap<String, Shape>>),
}

impl Shape {
    fn size(&self) -> u64 {
        match self {
            Shape::Unknown | Shape::Object(_) => 0,
            Shape::Scalar(n) | Shape::Str(n) | Shape::List(n, _) | Shape::Map(n, _) => *n,
        }
    }

    /// A shape covering both (the larger size); different kinds are `Unknown`.
    fn union(&self, other: &Shape) -> Shape {
        match (self, other) {
            (Shape::Scalar(a), Shape::Scalar(b)) => Shape::Scalar(*a.max(b)),
            (Shape::Str(a), Shape::Str(b)) => Shape::Str(*a.max(b)),
            (Shape::List(a, x), Shape::List(b, y)) => Shape::List(*a.max(b), Rc::new(x.union(y))),
            (Shape::Map(a, x), Shape::Map(b, y)) => Shape::Map(*a.max(b), Rc::new(x.union(y))),
            _ => Shape::Unknown,
        }
    }

    /// A shape no larger than either (the smaller size); different kinds are `Unknown`.
    fn meet(&self, other: &Shape) -> Shape {
        match (self, other) {
            (Shape::Scalar(a), Shape::Scalar(b)) => Shape::Scalar(*a.min(b)),
            (Shape::Str(a), Shape::Str(b)) => Shape::Str(*a.min(b)),
            (Shape::List(a, x), Shape::List(b, y)) => Shape::List(*a.min(b), Rc::new(x.meet(y))),
            (Shape::Map(a, x), Shape::Map(b, y)) => Shape::Map(*a.min(b), Rc::new(x.meet(y))),
            (Shape::Object(a), Shape::Object(b)) => Shape::Object(Rc::new(
                a.iter()
                    .filter_map(|(k, x)| b.get(k).map(|y| (k.clone(), x.meet(y))))
                    .collect(),
            )),
            _ => Shape::Unknown,
        }
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn bound(schema: &Value, key: &str) -> Option<u64> {
    let v = schema.get(key)?;
    // A negative bound is 0, as upstream's `zeroIfNegative`.
    v.as_u64().or_else(|| v.as_i64().map(|_| 0))
}

/// `n × factor`, rounded up, as cel-go's `multiplyByCostFactor` (same float arithmetic).
fn by_factor(n: u64, factor: f64) -> u64 {
    let x = n as f64 * factor;
    if x >= u64::MAX as f64 {
        u64::MAX
    } else {
        x.ceil() as u64
    }
}

/// The shape upstream's declaration of `schema` gives a value, and the smallest size of the
/// value serialized to JSON (which bounds how many fit in a request).
fn declared(schema: &Value, root: bool) -> (Shape, u64) {
    if flag(schema, "x-kubernetes-int-or-string") {
        let n = bound(schema, "maxLength").map_or(MAX_STRING, |n| n.saturating_mul(4));
        return (Shape::Str(n), 1);
    }
    let type_meta = root || flag(schema, "x-kubernetes-embedded-resource");
    match schema.get("type").and_then(Value::as_str) {
        Some("boolean") => (Shape::Scalar(0), MIN_BOOL_SIZE),
        Some("integer" | "number") => (Shape::Scalar(0), MIN_NUMBER_SIZE),
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("byte") => (
                Shape::Str(bound(schema, "maxLength").unwrap_or(MAX_STRING)),
                MIN_STRING_SIZE,
            ),
            Some("duration") => (
                Shape::Scalar(MAX_DURATION_SIZE_JSON),
                MIN_DURATION_SIZE_JSON,
            ),
            Some("date") => (Shape::Scalar(JSON_DATE_SIZE), JSON_DATE_SIZE),
            Some("date-time") => (
                Shape::Scalar(MAX_DATETIME_SIZE_JSON),
                MIN_DATETIME_SIZE_JSON,
            ),
            _ => {
                let n = match (bound(schema, "maxLength"), schema.get("enum")) {
                    // `maxLength` counts characters of up to 4 bytes.
                    (Some(n), _) => n.saturating_mul(4),
                    (None, Some(Value::Array(values))) if !values.is_empty() => values
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| s.len() as u64)
                        .max()
                        .unwrap_or(0),
                    _ => MAX_STRING,
                };
                (Shape::Str(n), MIN_STRING_SIZE)
            }
        },
        Some("array") => match schema.get("items").filter(|i| i.is_object()) {
            Some(items) => {
                let (item, item_min) =
                    declared(items, flag(items, "x-kubernetes-embedded-resource"));
                let n = bound(schema, "maxItems").unwrap_or(MAX_STRING / (item_min + 1));
                (Shape::List(n, Rc::new(item)), 2)
            }
            None => (Shape::Unknown, 2),
        },
        Some("object") => {
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let (value, value_min) =
                    declared(extra, flag(extra, "x-kubernetes-embedded-resource"));
                // Key, quotes, colon, comma and the smallest value.
                let n = bound(schema, "maxProperties").unwrap_or(MAX_STRING / (value_min + 6));
                return (Shape::Map(n, Rc::new(value)), 2);
            }
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut fields = BTreeMap::new();
            let mut min = 2u64;
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    let (shape, field_min) = declared(s, flag(s, "x-kubernetes-embedded-resource"));
                    if required.contains(&k.as_str()) && s.get("default").is_none() {
                        min = min.saturating_add(k.len() as u64 + field_min + 4);
                    }
                    if let Some(name) = escape(k) {
                        fields.insert(name, shape);
                    }
                }
            }
            if type_meta {
                for k in ["apiVersion", "kind"] {
                    fields.entry(k.into()).or_insert(Shape::Str(MAX_STRING));
                }
                fields.entry("metadata".into()).or_insert_with(|| {
                    let meta = [("name", MAX_STRING), ("generateName", MAX_STRING)]
                        .into_iter()
                        .map(|(k, n)| (k.to_string(), Shape::Str(n)))
                        .collect();
                    Shape::Object(Rc::new(meta))
                });
            }
            (Shape::Object(Rc::new(fields)), min)
        }
        _ => (Shape::Unknown, 1),
    }
}

/// How many times a rule on a node can run in one object when its enclosing lists and maps
/// leave that unbounded: as many of the node as fit in a request (upstream's
/// `maxCardinality`).
pub(super) fn unbounded_cardinality(schema: &Value, root: bool) -> u64 {
    let (_, min) = declared(schema, root);
    MAX_REQUEST_SIZE_BYTES / (min + 1)
}

/// The factor by which `schema` multiplies the number of its children (upstream's
/// `extractMaxElements`): a list's `maxItems`, a map's `maxProperties`, 1 for an object,
/// `None` when unbounded.
pub(super) fn child_factor(schema: &Value) -> Option<u64> {
    match schema.get("type").and_then(Value::as_str) {
        Some("object") if schema.get("additionalProperties").is_some() => {
            bound(schema, "maxProperties")
        }
        Some("array") => bound(schema, "maxItems"),
        _ => Some(1),
    }
}

/// The worst-case cost of `expr` evaluated with `self` (and `oldSelf`) of the type `schema`
/// declares, as cel-go's estimator computes it (an under-estimate where this module is not
/// sure, see the module documentation).
pub(super) fn estimate(expr: &IdedExpr, schema: &Value, root: bool) -> u64 {
    let (shape, _) = declared(schema, root);
    let mut e = Estimator {
        scope: vec![
            ("self".into(), shape.clone(), true),
            ("oldSelf".into(), shape, true),
        ],
        lower: false,
    };
    e.cost(expr).0
}

/// A lower bound of what evaluating `expr` with `self` = `new` (and `oldSelf` = `old`)
/// costs in cel-go: the estimate with the values' actual sizes (a list's items as small as
/// its smallest), only the left operand of `&&`/`||`, the cheaper branch of `?:`, and one
/// iteration of the comprehensions that can stop early (`all`, `exists`).
pub(super) fn runtime_lower_bound(
    expr: &IdedExpr,
    schema: &Value,
    root: bool,
    new: &Value,
    old: Option<&Value>,
) -> u64 {
    let old = old.map_or(Shape::Unknown, |o| actual(o, schema, root));
    let mut e = Estimator {
        scope: vec![
            ("self".into(), actual(new, schema, root), true),
            ("oldSelf".into(), old, true),
        ],
        lower: true,
    };
    e.cost(expr).0
}

/// The shape of an actual value of `schema`.
fn actual(v: &Value, schema: &Value, root: bool) -> Shape {
    let embedded = |s: &Value| flag(s, "x-kubernetes-embedded-resource");
    match v {
        Value::String(s) => match schema.get("format").and_then(Value::as_str) {
            Some("byte" | "date" | "date-time" | "duration")
                if !flag(schema, "x-kubernetes-int-or-string") =>
            {
                Shape::Scalar(0)
            }
            _ => Shape::Str(s.chars().count() as u64),
        },
        Value::Bool(_) | Value::Number(_) => Shape::Scalar(0),
        Value::Array(items) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            let elem = items
                .iter()
                .map(|i| actual(i, item_schema, embedded(item_schema)))
                .reduce(|a, b| a.meet(&b))
                .unwrap_or(Shape::Unknown);
            Shape::List(items.len() as u64, Rc::new(elem))
        }
        Value::Object(map) => {
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let value = map
                    .values()
                    .map(|x| actual(x, extra, embedded(extra)))
                    .reduce(|a, b| a.meet(&b))
                    .unwrap_or(Shape::Unknown);
                return Shape::Map(map.len() as u64, Rc::new(value));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let type_meta = root || embedded(schema);
            let mut fields = BTreeMap::new();
            for (k, x) in map {
                let field_schema = match props.and_then(|p| p.get(k)) {
                    Some(s) => s,
                    None if type_meta && matches!(k.as_str(), "apiVersion" | "kind") => {
                        &Value::Null
                    }
                    None if type_meta && k == "metadata" => &Value::Null,
                    None => continue,
                };
                if let Some(name) = escape(k) {
                    fields.insert(name, actual(x, field_schema, embedded(field_schema)));
                }
            }
            Shape::Object(Rc::new(fields))
        }
        Value::Null => Shape::Unknown,
    }
}

/// Variables in scope: name, shape, and whether the value is reached from `self` or
/// `oldSelf` (cel-go sizes only those from the schema).
struct Estimator {
    scope: Vec<(String, Shape, bool)>,
    /// A lower bound of the runtime cost rather than the worst case.
    lower: bool,
}

impl Estimator {
    fn lookup(&self, name: &str) -> Option<&Shape> {
        self.scope
            .iter()
            .rev()
            .find(|(n, ..)| n == name)
            .map(|(_, s, _)| s)
    }

    /// Whether `e` is a path from `self` or `oldSelf` (selections and indexing): cel-go
    /// knows the sizes of the items of those only.
    fn rooted(&self, e: &IdedExpr) -> bool {
        match &e.expr {
            Expr::Ident(name) => self
                .scope
                .iter()
                .rev()
                .find(|(n, ..)| n == name)
                .is_some_and(|(.., rooted)| *rooted),
            Expr::Select(s) => !s.test && self.rooted(&s.operand),
            Expr::Call(c) if c.func_name == "_[_]" && c.target.is_none() => {
                c.args.first().is_some_and(|a| self.rooted(a))
            }
            _ => false,
        }
    }

    /// The cost of `e` and the shape of its value.
    fn cost(&mut self, e: &IdedExpr) -> (u64, Shape) {
        match &e.expr {
            Expr::Literal(l) => (
                0,
                match l {
                    LiteralValue::String(s) => Shape::Str(s.inner().chars().count() as u64),
                    LiteralValue::Bytes(b) => Shape::Str(b.inner().len() as u64),
                    _ => Shape::Scalar(1),
                },
            ),
            Expr::Ident(name) => match self.lookup(name) {
                Some(s) => (1, s.clone()),
                // Namespaces and type names: nothing counted.
                None => (0, Shape::Unknown),
            },
            Expr::Select(s) => {
                let (c, operand) = self.cost(&s.operand);
                // Kubernetes makes presence tests (`has`) free.
                if s.test {
                    return (c, Shape::Scalar(1));
                }
                match operand {
                    Shape::Object(fields) => (
                        c.saturating_add(1),
                        fields.get(&s.field).cloned().unwrap_or(Shape::Unknown),
                    ),
                    Shape::Map(_, v) => (c.saturating_add(1), (*v).clone()),
                    _ => (c, Shape::Unknown),
                }
            }
            Expr::List(l) => {
                let mut sum = LIST_CREATE_BASE_COST;
                let mut elem: Option<Shape> = None;
                for x in &l.elements {
                    let (c, s) = self.cost(x);
                    sum = sum.saturating_add(c);
                    elem = Some(match elem {
                        Some(e) => e.union(&s),
                        None => s,
                    });
                }
                (
                    sum,
                    Shape::List(
                        l.elements.len() as u64,
                        Rc::new(elem.unwrap_or(Shape::Unknown)),
                    ),
                )
            }
            Expr::Map(m) => {
                let mut sum = MAP_CREATE_BASE_COST;
                let mut value: Option<Shape> = None;
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        let (kc, _) = self.cost(&me.key);
                        let (vc, s) = self.cost(&me.value);
                        sum = sum.saturating_add(kc).saturating_add(vc);
                        value = Some(match value {
                            Some(v) => v.union(&s),
                            None => s,
                        });
                    }
                }
                (
                    sum,
                    Shape::Map(
                        m.entries.len() as u64,
                        Rc::new(value.unwrap_or(Shape::Unknown)),
                    ),
                )
            }
            Expr::Struct(s) => {
                let mut sum = STRUCT_CREATE_BASE_COST;
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        sum = sum.saturating_add(self.cost(&f.value).0);
                    }
                }
                (sum, Shape::Unknown)
            }
            Expr::Comprehension(c) => {
                let (range_cost, range) = self.cost(&c.iter_range);
                let (init_cost, _) = self.cost(&c.accu_init);
                let rooted = self.rooted(&c.iter_range);
                let depth = self.scope.len();
                self.scope.push((c.accu_var.clone(), Shape::Unknown, false));
                let (first, second) = match &range {
                    _ if !rooted => (Shape::Unknown, Shape::Unknown),
                    Shape::List(_, elem) => match c.iter_var2 {
                        Some(_) => (Shape::Scalar(1), (**elem).clone()),
                        None => ((**elem).clone(), Shape::Unknown),
                    },
                    Shape::Map(_, value) => (Shape::Str(0), (**value).clone()),
                    _ => (Shape::Unknown, Shape::Unknown),
                };
                self.scope.push((c.iter_var.clone(), first, rooted));
                if let Some(v) = &c.iter_var2 {
                    self.scope.push((v.clone(), second, rooted));
                }
                let (loop_cost, _) = self.cost(&c.loop_cond);
                let (step_cost, _) = self.cost(&c.loop_step);
                self.scope.truncate(depth + 1);
                let (result_cost, _) = self.cost(&c.result);
                self.scope.truncate(depth);
                let mut count = range.size();
                // `all` and `exists` may stop after their first item.
                let always_true = matches!(&c.loop_cond.expr,
                    Expr::Literal(LiteralValue::Boolean(b)) if *b.inner());
                if self.lower && !always_true {
                    count = count.min(1);
                }
                let total = range_cost
                    .saturating_add(init_cost)
                    .saturating_add(result_cost)
                    .saturating_add(count.saturating_mul(loop_cost.saturating_add(step_cost)));
                let shape = match &c.accu_init.expr {
                    Expr::List(_) => Shape::List(count, Rc::new(Shape::Unknown)),
                    Expr::Map(_) => Shape::Map(count, Rc::new(Shape::Unknown)),
                    Expr::Literal(_) => Shape::Scalar(1),
                    _ => Shape::Unknown,
                };
                (total, shape)
            }
            Expr::Call(call) if self.lower && call.target.is_none() => {
                match (call.func_name.as_str(), call.args.as_slice()) {
                    // Only the left operand is sure to be evaluated.
                    ("_&&_" | "_||_", [lhs, rhs]) => {
                        let (c, _) = self.cost(lhs);
                        self.cost(rhs);
                        (c, Shape::Scalar(1))
                    }
                    ("_?_:_", [cond, t, f]) => {
                        let (c, _) = self.cost(cond);
                        let (tc, ts) = self.cost(t);
                        let (fc, fs) = self.cost(f);
                        (c.saturating_add(tc.min(fc)), ts.meet(&fs))
                    }
                    _ => self.call(call),
                }
            }
            Expr::Call(call) => self.call(call),
            _ => (0, Shape::Unknown),
        }
    }

    /// A call: its arguments, its target and the call itself.
    fn call(&mut self, call: &CallExpr) -> (u64, Shape) {
        let mut args_cost = 0u64;
        let mut args = Vec::with_capacity(call.args.len());
        for a in &call.args {
            let (c, s) = self.cost(a);
            args_cost = args_cost.saturating_add(c);
            args.push(s);
        }
        let target = call.target.as_ref().map(|t| self.cost(t));
        if let Some((c, _)) = &target {
            args_cost = args_cost.saturating_add(*c);
        }
        let target = target.map(|(_, s)| s);
        let (mut cost, shape) = call_cost(&call.func_name, target.as_ref(), &args);
        // Calls whose runtime cost is computed otherwise (Kubernetes' library traverses a
        // list by its items' actual lengths; cel-go versions differ on which string of
        // `startsWith` they count): not counted in a lower bound.
        if self.lower && NOT_IN_LOWER_BOUND.contains(&call.func_name.as_str()) {
            cost = 0;
        }
        (args_cost.saturating_add(cost), shape)
    }
}

/// The functions [`call_cost`] charges for that a runtime lower bound does not count.
const NOT_IN_LOWER_BOUND: &[&str] = &[
    "startsWith",
    "endsWith",
    "lowerAscii",
    "upperAscii",
    "trim",
    "substring",
    "replace",
    "url",
    "isSorted",
    "sum",
    "max",
    "min",
    "indexOf",
    "lastIndexOf",
];

/// The cost of a call itself (its arguments and target excluded) and the shape of its result.
fn call_cost(function: &str, target: Option<&Shape>, args: &[Shape]) -> (u64, Shape) {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Shape::Unknown);
    let is_str = |s: &Shape| matches!(s, Shape::Str(_));
    match (function, target) {
        // Short-circuiting operators cost their operands only.
        ("_&&_" | "_||_", None) => (0, Shape::Scalar(1)),
        ("_?_:_", None) => (0, arg(1).union(&arg(2))),
        ("@not_strictly_false" | "!_" | "-_" | "size", _) => (1, Shape::Scalar(1)),
        ("_==_" | "_!=_", None) => {
            let smallest = arg(0).size().min(arg(1).size());
            (
                by_factor(smallest, STRING_TRAVERSAL_COST_FACTOR),
                Shape::Scalar(1),
            )
        }
        ("_<_" | "_<=_" | "_>_" | "_>=_", None) => {
            let (l, r) = (arg(0), arg(1));
            let string_like = |s: &Shape| matches!(s, Shape::Str(_) | Shape::Unknown);
            if string_like(&l) || string_like(&r) {
                let smallest = l.size().min(r.size());
                (
                    by_factor(smallest, STRING_TRAVERSAL_COST_FACTOR),
                    Shape::Scalar(1),
                )
            } else {
                (1, Shape::Scalar(1))
            }
        }
        ("_+_", None) => match (arg(0), arg(1)) {
            (Shape::Str(a), Shape::Str(b)) => {
                let n = a.saturating_add(b);
                (by_factor(n, STRING_TRAVERSAL_COST_FACTOR), Shape::Str(n))
            }
            (Shape::List(a, x), Shape::List(b, y)) => {
                (1, Shape::List(a.saturating_add(b), Rc::new(x.union(&y))))
            }
            (Shape::Scalar(_), Shape::Scalar(_)) => (1, Shape::Scalar(1)),
            _ => (0, Shape::Unknown),
        },
        ("_-_" | "_*_" | "_/_" | "_%_", None) => match (arg(0), arg(1)) {
            (Shape::Scalar(_), Shape::Scalar(_)) => (1, Shape::Scalar(1)),
            _ => (0, Shape::Unknown),
        },
        // Membership is linear in a list, constant in a map.
        ("@in", None) => match arg(1) {
            Shape::List(n, _) => (n, Shape::Scalar(1)),
            Shape::Map(..) => (1, Shape::Scalar(1)),
            _ => (0, Shape::Scalar(1)),
        },
        ("_[_]", None) => match arg(0) {
            Shape::List(_, e) | Shape::Map(_, e) => (1, (*e).clone()),
            _ => (0, Shape::Unknown),
        },
        ("matches", Some(t)) if is_str(t) => {
            let text = by_factor(t.size().saturating_add(1), STRING_TRAVERSAL_COST_FACTOR);
            let regex = by_factor(arg(0).size(), REGEX_STRING_LENGTH_COST_FACTOR);
            (text.saturating_mul(regex), Shape::Scalar(1))
        }
        ("contains", Some(t)) if is_str(t) => {
            let text = by_factor(t.size(), STRING_TRAVERSAL_COST_FACTOR);
            let sub = by_factor(arg(0).size(), STRING_TRAVERSAL_COST_FACTOR);
            (text.saturating_mul(sub), Shape::Scalar(1))
        }
        ("startsWith" | "endsWith", Some(t)) if is_str(t) => (
            by_factor(arg(0).size(), STRING_TRAVERSAL_COST_FACTOR),
            Shape::Scalar(1),
        ),
        // Kubernetes' library: string traversals.
        ("lowerAscii" | "upperAscii" | "trim", Some(t)) if is_str(t) => (
            by_factor(t.size(), STRING_TRAVERSAL_COST_FACTOR),
            Shape::Str(t.size()),
        ),
        ("substring", Some(t)) if is_str(t) => (
            by_factor(t.size(), STRING_TRAVERSAL_COST_FACTOR),
            Shape::Str(t.size()),
        ),
        ("replace", Some(t)) if is_str(t) => (
            by_factor(t.size(), 2.0 * STRING_TRAVERSAL_COST_FACTOR),
            Shape::Unknown,
        ),
        ("url", None) if is_str(&arg(0)) => (
            by_factor(arg(0).size(), STRING_TRAVERSAL_COST_FACTOR),
            Shape::Unknown,
        ),
        // One comparison per element, plus the traversal of string elements.
        ("isSorted" | "sum" | "max" | "min" | "indexOf" | "lastIndexOf", Some(t)) => match t {
            Shape::List(n, elem) => {
                let per = match &**elem {
                    Shape::Str(m) => 1 + by_factor(*m, STRING_TRAVERSAL_COST_FACTOR),
                    _ => 1,
                };
                (n.saturating_mul(per), Shape::Unknown)
            }
            Shape::Str(n) => (
                by_factor(*n, STRING_TRAVERSAL_COST_FACTOR),
                Shape::Scalar(1),
            ),
            _ => (0, Shape::Unknown),
        },
        ("dyn", None) => (1, arg(0)),
        // Anything else: its arguments only (cel-go charges at least 1 for most; an
        // under-estimate).
        _ => (0, Shape::Unknown),
    }
}

/// Upstream's `getCostErrorMessage`.
/// Upstream's `Forbidden` cause on `field` when the `estimated` cost of a rule or message
/// expression (`what`: "estimated rule cost", ...) exceeds the per-expression limit.
pub(super) fn over_expression_limit(what: &str, estimated: u64, field: String) -> Option<Cause> {
    (estimated > STATIC_ESTIMATED_COST_LIMIT).then(|| Cause {
        reason: "FieldValueForbidden",
        message: format!(
            "Forbidden: {}",
            cost_error(what, estimated, STATIC_ESTIMATED_COST_LIMIT)
        ),
        field,
    })
}

pub(super) fn cost_error(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

/// The estimated cost of all the rules of one schema (upstream's `TotalCost`).
#[derive(Default)]
pub(super) struct Total {
    total: u64,
    /// The (at most 4) most expensive expressions costing at least 1% of the limit.
    most_expensive: Vec<(String, u64)>,
}

impl Total {
    /// Adds the cost of the expression at `field`.
    pub(super) fn observe(&mut self, field: String, cost: u64) {
        self.total = self.total.saturating_add(cost);
        if cost < STATIC_ESTIMATED_CRD_COST_LIMIT / 100 {
            return;
        }
        self.most_expensive.push((field, cost));
        self.most_expensive.sort_by_key(|e| std::cmp::Reverse(e.1));
        self.most_expensive.truncate(4);
    }

    /// Upstream's causes when the total exceeds the CRD limit: each of the most expensive
    /// expressions, then the schema at `path`.
    pub(super) fn finish(self, path: &str, out: &mut Vec<Cause>) {
        if self.total <= STATIC_ESTIMATED_CRD_COST_LIMIT {
            return;
        }
        for (field, _) in self.most_expensive {
            out.push(Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema".into(),
                field,
            });
        }
        out.push(Cause {
            reason: "FieldValueForbidden",
            message: format!(
                "Forbidden: {}",
                cost_error(
                    "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                    self.total,
                    STATIC_ESTIMATED_CRD_COST_LIMIT
                )
            ),
            field: path.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cost_of(rule: &str, schema: &Value) -> u64 {
        let compiled = super::super::compile(rule);
        let program = compiled.program.as_ref().expect("compiles");
        estimate(program.expression(), schema, false)
    }

    fn causes(schema: &Value) -> Vec<String> {
        let mut out = Vec::new();
        super::super::check_schema(schema, "spec.versions[0].schema.openAPIV3Schema", &mut out);
        out.iter()
            .map(|c| format!("{} {}: {}", c.reason, c.field, c.message))
            .collect()
    }

    const HINT: &str = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";
    const AT: &str = "spec.versions[0].schema.openAPIV3Schema";

    /// A CRD schema whose `spec` has a list of strings and a list of integers, each with a
    /// rule iterating it; `bounds` are added to both lists and `max_length` to the strings.
    fn lists(bounds: Value, max_length: Value) -> Value {
        let mut strings = json!({"type": "array", "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.all(x, x.matches('^[a-z]+$'))"}]});
        let mut ints = json!({"type": "array", "items": {"type": "integer"},
            "x-kubernetes-validations": [{"rule": "self.all(a, self.all(b, a != b))"}]});
        for list in [&mut strings, &mut ints] {
            if let (Some(l), Some(b)) = (list.as_object_mut(), bounds.as_object()) {
                l.extend(b.clone());
            }
        }
        if let (Some(items), Some(m)) = (strings["items"].as_object_mut(), max_length.as_object()) {
            items.extend(m.clone());
        }
        json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"names": strings, "ids": ints}}}})
    }

    #[test]
    fn unbounded_iterations_are_refused_as_upstream() {
        let at = format!("{AT}.properties[spec].properties");
        assert_eq!(
            causes(&lists(json!({}), json!({}))),
            [
                format!(
                    "FieldValueForbidden {at}[ids].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x {HINT}"
                ),
                format!(
                    "FieldValueForbidden {at}[names].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x {HINT}"
                ),
                // The most expensive first.
                format!(
                    "FieldValueForbidden {at}[ids].x-kubernetes-validations[0].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ),
                format!(
                    "FieldValueForbidden {at}[names].x-kubernetes-validations[0].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ),
                format!(
                    "FieldValueForbidden {AT}: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x {HINT}"
                ),
            ]
        );
        // Bounded lists and strings are cheap.
        let bounded = lists(json!({"maxItems": 10}), json!({"maxLength": 10}));
        assert_eq!(causes(&bounded), Vec::<String>::new());
        // Bounding the list alone leaves the strings 3 MiB long: still refused.
        let got = causes(&lists(json!({"maxItems": 100}), json!({})));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("[names].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of 6.3x"), "{got:?}");
    }

    #[test]
    fn estimates_follow_cel_go() {
        let names = json!({"type": "array", "maxItems": 10,
            "items": {"type": "string", "maxLength": 10}});
        // range 1 + result 1 + 10 × (condition 2 + step (1 + x 1 + ⌈41 × 0.1⌉ × ⌈8 × 0.25⌉)).
        assert_eq!(cost_of("self.all(x, x.matches('^[a-z]+$'))", &names), 142);
        let ids = json!({"type": "array", "maxItems": 10, "items": {"type": "integer"}});
        assert_eq!(cost_of("self.all(a, self.all(b, a != b))", &ids), 552);
        // Unbounded: 1048575 strings of 3145726 characters.
        let unbounded = json!({"type": "array", "items": {"type": "string"}});
        assert_eq!(
            cost_of("self.all(x, x.matches('^[a-z]+$'))", &unbounded),
            2 + 1_048_575 * (2 + 1 + 1 + 314_573 * 2)
        );
        // Scalars, selections, literals and `has`.
        let obj = json!({"type": "object", "properties": {
            "a": {"type": "integer"}, "s": {"type": "string", "maxLength": 5}}});
        assert_eq!(cost_of("self.a > 1 && has(self.s)", &obj), 3 + 1);
        assert_eq!(cost_of("self.s == 'abc'", &obj), 2 + 1);
        // The items of a literal list have no size cel-go knows of: `x == 1` costs its operands.
        assert_eq!(
            cost_of("self.s.startsWith('ab') || [1, 2].exists(x, x == 1)", &obj),
            3 + 10 + 1 + 2 * (3 + 2)
        );
        // Membership: linear in a list, constant in a map.
        let m = json!({"type": "object", "properties": {
            "l": {"type": "array", "maxItems": 50, "items": {"type": "string"}},
            "m": {"type": "object", "maxProperties": 50, "additionalProperties": {"type": "string"}}}});
        assert_eq!(cost_of("'a' in self.l", &m), 2 + 50);
        assert_eq!(cost_of("'a' in self.m", &m), 2 + 1);
        // `self` and `oldSelf` alike.
        assert_eq!(cost_of("self.s.contains(oldSelf.s)", &obj), 4 + 4);
    }

    #[test]
    fn rules_under_unbounded_lists_run_once_per_fitting_node() {
        let schema = |max_items: Option<u64>| {
            let mut list = json!({"type": "array", "items": {"type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63}},
                "x-kubernetes-validations": [{"rule": "self.name.matches('^[a-z]+$')"}]}});
            if let Some(n) = max_items {
                list["maxItems"] = json!(n);
            }
            json!({"type": "object", "properties": {"spec": {"type": "object",
                "properties": {"list": list}}}})
        };
        // 54 per item × (3 MiB / 3) items: 5.66 times the limit, under the CRD's total.
        assert_eq!(
            causes(&schema(None)),
            [format!(
                "FieldValueForbidden {AT}.properties[spec].properties[list].items.x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of 5.7x {HINT}"
            )]
        );
        assert_eq!(causes(&schema(Some(1000))), Vec::<String>::new());
        // Nested bounds multiply.
        assert_eq!(
            child_factor(&json!({"type": "array", "maxItems": 7})),
            Some(7)
        );
        assert_eq!(child_factor(&json!({"type": "array"})), None);
        assert_eq!(
            child_factor(&json!({"type": "object", "additionalProperties": {}})),
            None
        );
        assert_eq!(child_factor(&json!({"type": "object"})), Some(1));
    }

    #[test]
    fn the_total_is_limited_too() {
        // 11 rules of 9.9M each: each under the per-rule limit, together over the CRD's.
        let rules: Vec<Value> = (0..11)
            .map(|_| json!({"rule": "self.matches('^[a-z]+$')"}))
            .collect();
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"list": {"type": "array", "maxItems": 900_000, "items": {
                "type": "string", "maxLength": 10, "x-kubernetes-validations": rules}}}}}});
        let got = causes(&schema);
        let at = format!("{AT}.properties[spec].properties[list].items.x-kubernetes-validations");
        assert_eq!(
            got,
            [
                format!(
                    "FieldValueForbidden {at}[0].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ),
                format!(
                    "FieldValueForbidden {at}[1].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ),
                format!(
                    "FieldValueForbidden {at}[2].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ),
                format!(
                    "FieldValueForbidden {at}[3].rule: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
                ),
                format!(
                    "FieldValueForbidden {AT}: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of 1.089000x {HINT}"
                ),
            ]
        );
    }

    #[test]
    fn message_expressions_are_estimated_without_cardinality() {
        let schema = |items: Value| {
            json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "names": {"type": "array", "items": items, "maxItems": 100, "x-kubernetes-validations": [{
                    "rule": "self.size() < 50",
                    "messageExpression": "self.all(x, x.matches('^a$')) ? 'only a' : 'too many'"}]}}}}})
        };
        let at = format!("{AT}.properties[spec].properties[names].x-kubernetes-validations[0]");
        // 100 strings of 3 MiB: 2 + 100 × (2 + 1 + 1 + 314573 × 1) + 0 = 31457702.
        assert_eq!(
            causes(&schema(json!({"type": "string"}))),
            [format!(
                "FieldValueForbidden {at}.messageExpression: Forbidden: estimated messageExpression cost exceeds budget by factor of 3.1x {HINT}"
            )]
        );
        assert_eq!(
            causes(&schema(json!({"type": "string", "maxLength": 1000}))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn thresholds_match_upstream_measurements() {
        // The largest `maxItems` a real API server accepts for this rule, by `maxLength` of
        // the items (measured against upstream's CRD validation).
        for (max_length, max_items) in [(16, 909_090), (63, 333_333), (253, 94_339), (1024, 24_154)]
        {
            let schema = |n: u64| {
                json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                    "tags": {"type": "array", "maxItems": n,
                        "items": {"type": "string", "maxLength": max_length},
                        "x-kubernetes-validations": [{"rule": "self.all(x, x.contains('gpu'))"}]}}}}})
            };
            assert_eq!(
                causes(&schema(max_items)),
                Vec::<String>::new(),
                "{max_length}"
            );
            let got = causes(&schema(max_items + 1));
            assert_eq!(got.len(), 1, "{max_length}: {got:?}");
            assert!(got[0].contains("by factor of 1.000"), "{got:?}");
        }
    }

    /// A schema whose `spec.names` (100 strings of at most `max_length`) has `rules` copies
    /// of a rule matching every name against a regular expression (of cost 9 per 40 chars).
    fn regex_rules(max_length: u64, rules: usize) -> Value {
        let rule = "self.map(x, x.matches('^[a-z0-9]+([-._][a-z0-9]+)*[a-z]$')).size() >= 0";
        let rules: Vec<Value> = (0..rules).map(|_| json!({"rule": rule})).collect();
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "names": {"type": "array", "maxItems": 100,
                "items": {"type": "string", "maxLength": max_length},
                "x-kubernetes-validations": rules}}}}})
    }

    fn names(n: usize, len: usize) -> Value {
        json!({"spec": {"names": vec!["a".repeat(len); n]}})
    }

    fn runtime_causes(schema: &Value, object: &Value) -> Vec<String> {
        super::super::validate(schema, object, None)
            .iter()
            .map(|c| format!("{} {}: {}", c.reason, c.field, c.message))
            .collect()
    }

    #[test]
    fn an_evaluation_over_the_per_call_limit_stops_validation() {
        let schema = regex_rules(20_000, 1);
        assert_eq!(causes(&schema), Vec::<String>::new(), "the CRD is accepted");
        // 100 × (⌈15001 × 0.1⌉ × 9 + 12) + 14 = 1352114 > 1M.
        assert_eq!(
            runtime_causes(&schema, &names(100, 15_000)),
            [
                "FieldValueInvalid spec.names: Invalid value: \"array\": 'operation cancelled: actual cost limit exceeded': no further validation rules will be run due to call cost exceeds limit for rule: self.map(x, x.matches('^[a-z0-9]+([-._][a-z0-9]+)*[a-z]$')).size() >= 0"
            ]
        );
        assert_eq!(
            runtime_causes(&schema, &names(100, 1_000)),
            Vec::<String>::new()
        );
        assert_eq!(
            runtime_causes(&schema, &names(60, 15_000)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn evaluations_share_the_objects_budget() {
        // 632114 each: 15 fit in the 10M budget, the 16th does not.
        let object = names(100, 7_000);
        let schema = regex_rules(8_000, 16);
        assert_eq!(causes(&schema), Vec::<String>::new(), "the CRD is accepted");
        assert_eq!(
            runtime_causes(&schema, &object),
            [
                "FieldValueInvalid spec.names: Invalid value: \"array\": validation failed due to running out of cost budget, no further validation rules will be run"
            ]
        );
        assert_eq!(
            runtime_causes(&regex_rules(8_000, 15), &object),
            Vec::<String>::new()
        );
        // What may stop early counts once: `exists` over 100 long names is cheap.
        let exists = json!({"type": "object", "properties": {"names": {"type": "array",
            "maxItems": 100, "items": {"type": "string", "maxLength": 20_000},
            "x-kubernetes-validations": [{"rule": "self.exists(x, x.matches('^a+$'))"}]}}});
        assert_eq!(
            runtime_causes(&exists, &json!({"names": vec!["a".repeat(20_000); 100]})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn factors_are_worded_as_upstream() {
        let msg = |c| cost_error("estimated rule cost", c, STATIC_ESTIMATED_COST_LIMIT);
        assert!(msg(12_000_000).contains("by factor of 1.200000x ("));
        assert!(msg(25_000_000).contains("by factor of 2.5x ("));
        assert!(msg(1_000_000_000).contains("by factor of 100.0x ("));
        assert!(msg(1_000_000_001).contains("by factor of more than 100x ("));
    }
}
