//! A conservative type checker for `x-kubernetes-validations` rules, over cel-rust's AST.
//!
//! Upstream compiles every rule with cel-go's checker, `self` (and `oldSelf`) declared with
//! the type the structural schema gives them, and refuses a rule that is ill-typed
//! (`found no matching overload for '_>_' applied to '(int, string)'`), that selects an
//! undeclared field, that iterates over a scalar, or whose result is not a bool (a message
//! expression's not a string). cel-rust has no checker: this module infers types bottom-up
//! and reports those errors in cel-go's words and frame ([`super::typed::at`]).
//!
//! It is deliberately conservative: an expression whose type it cannot tell (preserved unknown
//! fields, int-or-string, functions it does not know, opaque library types, mixed branches)
//! is `dyn`, which matches everything, and an error is reported only when every operand
//! involved has a definite type for which the standard library (or the Kubernetes library)
//! has no overload. Cross-type numeric ordering (`1 < 1.5`, cel-go's cross-type comparisons)
//! and equality (`1 == 1.0`, which cel-go's checker may refuse) are accepted; mixed numeric
//! arithmetic (`1 + 1.5`) is not, as in CEL.
//!
//! Not checked: operators on schema objects and library types (their cel-go type names are
//! generated upstream), arguments of global functions and conversions, the arguments of the
//! library types' methods, and a result of type `dyn` (upstream refuses a rule whose type
//! is `dyn`, e.g. an int-or-string `self`; here it is accepted).

use std::collections::BTreeMap;
use std::rc::Rc;

use cel::Program;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use serde_json::Value;

use super::typed::{at, escape};

/// A CEL type as far as the checker knows it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Ty {
    /// Unknown or genuinely dynamic: matches anything.
    Dyn,
    /// The element type of an empty literal (a type parameter not bound yet).
    Empty,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// A schema object with declared properties.
    Object(Rc<Object>),
    Optional(Box<Ty>),
    /// A library type (`kubernetes.Quantity`, `net.IP`, ...): its methods are typed, its use
    /// in operators is not checked.
    Opaque(&'static str),
}

/// The fields of a schema object; an open object (preserved unknown fields, `metadata`)
/// has fields of unknown type besides the declared ones.
#[derive(Debug, PartialEq)]
pub(super) struct Object {
    fields: BTreeMap<String, Ty>,
    open: bool,
}

const QUANTITY: &str = "kubernetes.Quantity";
const IP: &str = "net.IP";
const CIDR: &str = "net.CIDR";
const URL: &str = "kubernetes.URL";
const SEMVER: &str = "kubernetes.Semver";

impl Ty {
    fn list(t: Ty) -> Ty {
        Ty::List(Box::new(t))
    }

    /// A type whose overloads the checker knows exactly.
    fn definite(&self) -> bool {
        matches!(
            self,
            Ty::Bool
                | Ty::Int
                | Ty::Uint
                | Ty::Double
                | Ty::String
                | Ty::Bytes
                | Ty::Duration
                | Ty::Timestamp
                | Ty::List(_)
                | Ty::Map(..)
        )
    }

    fn scalar(&self) -> bool {
        self.definite() && !matches!(self, Ty::List(_) | Ty::Map(..))
    }

    fn numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }

    /// cel-go's name of the type, as its errors print it.
    fn name(&self) -> String {
        match self {
            Ty::Dyn | Ty::Empty | Ty::Object(_) => "dyn".into(),
            Ty::Null => "null_type".into(),
            Ty::Bool => "bool".into(),
            Ty::Int => "int".into(),
            Ty::Uint => "uint".into(),
            Ty::Double => "double".into(),
            Ty::String => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Duration => "google.protobuf.Duration".into(),
            Ty::Timestamp => "google.protobuf.Timestamp".into(),
            Ty::List(e) => format!("list({})", e.name()),
            Ty::Map(k, v) => format!("map({}, {})", k.name(), v.name()),
            Ty::Optional(t) => format!("optional_type({})", t.name()),
            Ty::Opaque(n) => (*n).into(),
        }
    }

    /// Two scalars that can never be equal or compared (`int` and `string`).
    fn disjoint(&self, other: &Ty) -> bool {
        self.definite()
            && other.definite()
            && !(self.numeric() && other.numeric())
            && std::mem::discriminant(self) != std::mem::discriminant(other)
    }
}

/// The common type of two expressions (list elements, conditional branches): an unbound
/// parameter takes the other side, a disagreement is `dyn`.
fn join(a: &Ty, b: &Ty) -> Ty {
    match (a, b) {
        (Ty::Empty, t) | (t, Ty::Empty) => t.clone(),
        (Ty::List(x), Ty::List(y)) => Ty::list(join(x, y)),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => {
            Ty::Map(Box::new(join(k1, k2)), Box::new(join(v1, v2)))
        }
        (Ty::Optional(x), Ty::Optional(y)) => Ty::Optional(Box::new(join(x, y))),
        (x, y) if x == y => x.clone(),
        _ => Ty::Dyn,
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// The type the structural schema gives a value (upstream's `SchemaDeclType`); `root` (and
/// embedded resources) also have `apiVersion`, `kind` and `metadata`.
pub(super) fn schema_type(schema: &Value, root: bool) -> Ty {
    if flag(schema, "x-kubernetes-int-or-string") {
        return Ty::Dyn;
    }
    let type_meta = root || flag(schema, "x-kubernetes-embedded-resource");
    match schema.get("type").and_then(Value::as_str) {
        Some("boolean") => Ty::Bool,
        Some("integer") => Ty::Int,
        Some("number") => Ty::Double,
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("date-time" | "date") => Ty::Timestamp,
            Some("duration") => Ty::Duration,
            Some("byte") => Ty::Bytes,
            _ => Ty::String,
        },
        Some("array") => match schema.get("items").filter(|i| i.is_object()) {
            Some(items) => Ty::list(schema_type(items, false)),
            None => Ty::Dyn,
        },
        Some("object") => {
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                return Ty::Map(Box::new(Ty::String), Box::new(schema_type(extra, false)));
            }
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return Ty::Dyn;
            };
            let mut fields = BTreeMap::new();
            for (k, s) in props {
                if let Some(name) = escape(k) {
                    fields.insert(name, schema_type(s, false));
                }
            }
            if type_meta {
                fields.insert("apiVersion".into(), Ty::String);
                fields.insert("kind".into(), Ty::String);
                let meta = [("name", Ty::String), ("generateName", Ty::String)]
                    .into_iter()
                    .map(|(k, t)| (k.to_string(), t))
                    .collect();
                fields.insert(
                    "metadata".into(),
                    Ty::Object(Rc::new(Object {
                        fields: meta,
                        open: true,
                    })),
                );
            }
            let open = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            Ty::Object(Rc::new(Object { fields, open }))
        }
        _ => Ty::Dyn,
    }
}

/// What a rule's result must be.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Want {
    /// A rule: `bool`.
    Bool,
    /// A message expression: `string`.
    String,
}

/// Type-checks `program` (compiled from `source`) with `self`/`oldSelf` of type `self_ty`
/// (`oldSelf` optional with `optional_old_self`): cel-go's errors, one a line group, or the
/// wrong result type in upstream's words.
pub(super) fn check(
    program: &Program,
    source: &str,
    self_ty: &Ty,
    optional_old_self: bool,
    want: Want,
) -> Option<Failure> {
    let old_ty = if optional_old_self {
        Ty::Optional(Box::new(self_ty.clone()))
    } else {
        self_ty.clone()
    };
    let mut c = Checker {
        program,
        scope: vec![("self".into(), self_ty.clone()), ("oldSelf".into(), old_ty)],
        errors: Vec::new(),
    };
    let ty = c.infer(program.expression());
    if !c.errors.is_empty() {
        c.errors.sort_by_key(|(offset, _)| *offset);
        c.errors.dedup();
        return Some(Failure::Compile(
            c.errors
                .iter()
                .map(|(offset, m)| at(source, *offset, m))
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    match want {
        Want::Bool if ty.definite() && ty != Ty::Bool => {
            Some(Failure::Result("cel expression must evaluate to a bool"))
        }
        Want::String if ty.definite() && ty != Ty::String => Some(Failure::Result(
            "messageExpression must evaluate to a string",
        )),
        _ => None,
    }
}

/// Why an expression is refused.
#[derive(Debug, PartialEq)]
pub(super) enum Failure {
    /// cel-go's checker errors, framed (`ERROR: <input>:L:C: ...`).
    Compile(String),
    /// A well-typed expression of the wrong result type.
    Result(&'static str),
}

impl Failure {
    /// Upstream's detail: compilation errors after `prefix` (`compilation failed: `).
    pub(super) fn detail(&self, prefix: &str) -> String {
        match self {
            Failure::Compile(e) => format!("{prefix}{e}"),
            Failure::Result(r) => (*r).to_string(),
        }
    }
}

struct Checker<'p> {
    program: &'p Program,
    scope: Vec<(String, Ty)>,
    errors: Vec<(usize, String)>,
}

/// Namespaces of global functions (`sets.contains`, `optional.of`).
const NAMESPACES: &[&str] = &[
    "optional", "math", "sets", "base64", "strings", "lists", "ip",
];

impl Checker<'_> {
    fn error(&mut self, id: u64, message: String) -> Ty {
        let offset = self
            .program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize);
        self.errors.push((offset, message));
        Ty::Dyn
    }

    fn lookup(&self, name: &str) -> Option<&Ty> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    fn infer(&mut self, e: &IdedExpr) -> Ty {
        match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => self.lookup(name).cloned().unwrap_or(Ty::Dyn),
            Expr::List(l) => {
                let mut elem = Ty::Empty;
                for x in &l.elements {
                    let t = self.infer(x);
                    elem = join(&elem, &t);
                }
                if l.optional_indices.is_empty() {
                    Ty::list(elem)
                } else {
                    Ty::list(Ty::Dyn)
                }
            }
            Expr::Map(m) => {
                let (mut key, mut value) = (Ty::Empty, Ty::Empty);
                let mut optional = false;
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            let k = self.infer(&me.key);
                            let v = self.infer(&me.value);
                            optional |= me.optional;
                            key = join(&key, &k);
                            value = join(&value, &v);
                        }
                        EntryExpr::StructField(f) => {
                            self.infer(&f.value);
                            optional = true;
                        }
                    }
                }
                if optional {
                    Ty::Map(Box::new(key), Box::new(Ty::Dyn))
                } else {
                    Ty::Map(Box::new(key), Box::new(value))
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => {
                            self.infer(&f.value);
                        }
                        EntryExpr::MapEntry(me) => {
                            self.infer(&me.key);
                            self.infer(&me.value);
                        }
                    }
                }
                Ty::Dyn
            }
            Expr::Select(s) => {
                let operand = self.infer(&s.operand);
                let field = self.select(e.id, &operand, &s.field);
                if s.test { Ty::Bool } else { field }
            }
            Expr::Comprehension(c) => {
                let range = self.infer(&c.iter_range);
                let (first, second) = match &range {
                    Ty::List(elem) => match c.iter_var2 {
                        Some(_) => (Ty::Int, (**elem).clone()),
                        None => ((**elem).clone(), Ty::Dyn),
                    },
                    Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
                    t if t.scalar() => {
                        self.error(
                            c.iter_range.id,
                            format!(
                                "expression of type '{}' cannot be the range of a comprehension (must be list, map, or dynamic)",
                                t.name()
                            ),
                        );
                        (Ty::Dyn, Ty::Dyn)
                    }
                    _ => (Ty::Dyn, Ty::Dyn),
                };
                let init = self.infer(&c.accu_init);
                let depth = self.scope.len();
                self.scope.push((c.iter_var.clone(), first));
                if let Some(v) = &c.iter_var2 {
                    self.scope.push((v.clone(), second));
                }
                self.scope.push((c.accu_var.clone(), init.clone()));
                self.infer(&c.loop_cond);
                let step = self.infer(&c.loop_step);
                let accu = join(&init, &step);
                self.scope
                    .truncate(depth + 1 + usize::from(c.iter_var2.is_some()));
                self.scope.push((c.accu_var.clone(), accu));
                let result = self.infer(&c.result);
                self.scope.truncate(depth);
                result
            }
            Expr::Call(call) => {
                // A namespaced global (`sets.contains(..)`), not a method of a variable.
                if let Some(t) = &call.target
                    && let Expr::Ident(ns) = &t.expr
                    && NAMESPACES.contains(&ns.as_str())
                    && self.lookup(ns).is_none()
                {
                    let args: Vec<Ty> = call.args.iter().map(|a| self.infer(a)).collect();
                    return global(&format!("{ns}.{}", call.func_name), &args);
                }
                let target = call.target.as_ref().map(|t| self.infer(t));
                let args: Vec<Ty> = call.args.iter().map(|a| self.infer(a)).collect();
                let name = call.func_name.as_str();
                let result = match &target {
                    Some(t) => method(name, t, &args),
                    None => operator(name, &args).unwrap_or_else(|| Ok(global(name, &args))),
                };
                match result {
                    Ok(t) => t,
                    Err(()) => {
                        let list = |a: &[Ty]| a.iter().map(Ty::name).collect::<Vec<_>>().join(", ");
                        let signature = match &target {
                            Some(t) => format!("{}.({})", t.name(), list(&args)),
                            None => format!("({})", list(&args)),
                        };
                        self.error(
                            e.id,
                            format!(
                                "found no matching overload for '{name}' applied to '{signature}'"
                            ),
                        )
                    }
                }
            }
            Expr::Unspecified => Ty::Dyn,
        }
    }

    /// The type of `operand.field` (`id` the selection's).
    fn select(&mut self, id: u64, operand: &Ty, field: &str) -> Ty {
        match operand {
            Ty::Object(o) => match o.fields.get(field) {
                Some(t) => t.clone(),
                None if o.open => Ty::Dyn,
                None => self.error(id, format!("undefined field '{field}'")),
            },
            Ty::Map(k, v) if matches!(**k, Ty::String | Ty::Dyn | Ty::Empty) => (**v).clone(),
            Ty::Optional(inner) => match &**inner {
                Ty::Object(o) => {
                    Ty::Optional(Box::new(o.fields.get(field).cloned().unwrap_or(Ty::Dyn)))
                }
                Ty::Map(_, v) => Ty::Optional(v.clone()),
                _ => Ty::Dyn,
            },
            t if t.scalar() || matches!(t, Ty::List(_)) => self.error(
                id,
                format!("type '{}' does not support field selection", t.name()),
            ),
            _ => Ty::Dyn,
        }
    }
}

type Typed = Result<Ty, ()>;

/// The operators the parser produces: `None` when `name` is not one.
fn operator(name: &str, args: &[Ty]) -> Option<Typed> {
    use Ty::*;
    let any_vague = args.iter().any(|a| !a.definite());
    let r = match (name, args) {
        ("_==_" | "_!=_", [a, b]) => {
            if a.disjoint(b) {
                Err(())
            } else {
                Ok(Bool)
            }
        }
        ("_<_" | "_<=_" | "_>_" | "_>=_", [a, b]) => {
            let ordered = |t: &Ty| t.scalar();
            if any_vague || (ordered(a) && ordered(b) && !a.disjoint(b)) {
                Ok(Bool)
            } else {
                Err(())
            }
        }
        ("_&&_" | "_||_", [a, b]) => {
            if [a, b].iter().any(|t| t.definite() && **t != Bool) {
                Err(())
            } else {
                Ok(Bool)
            }
        }
        ("!_", [a]) => {
            if a.definite() && *a != Bool {
                Err(())
            } else {
                Ok(Bool)
            }
        }
        ("@not_strictly_false", [_]) => Ok(Bool),
        ("-_", [a]) => match a {
            Int | Double => Ok(a.clone()),
            t if t.definite() => Err(()),
            _ => Ok(Dyn),
        },
        ("_?_:_", [c, a, b]) => {
            if c.definite() && *c != Bool {
                Err(())
            } else {
                Ok(join(a, b))
            }
        }
        ("_+_" | "_-_" | "_*_" | "_/_" | "_%_", [a, b]) => {
            if any_vague {
                Ok(match (name, a, b) {
                    ("_+_", List(x), List(y)) => List(Box::new(join(x, y))),
                    ("_+_", List(x), Empty | Dyn) | ("_+_", Empty | Dyn, List(x)) => {
                        List(x.clone())
                    }
                    _ => Dyn,
                })
            } else {
                arithmetic(name, a, b)
            }
        }
        ("@in", [x, range]) => match range {
            List(e) | Map(e, _) if x.disjoint(e) && e.scalar() => Err(()),
            t if t.scalar() => Err(()),
            _ => Ok(Bool),
        },
        ("_[_]", [operand, index]) => match operand {
            List(e) => {
                if index.definite() && !index.numeric() {
                    Err(())
                } else {
                    Ok((**e).clone())
                }
            }
            Map(k, v) => {
                if k.scalar() && index.disjoint(k) {
                    Err(())
                } else {
                    Ok((**v).clone())
                }
            }
            t if t.scalar() => Err(()),
            Optional(inner) => Ok(Optional(Box::new(match &**inner {
                List(e) => (**e).clone(),
                Map(_, v) => (**v).clone(),
                _ => Dyn,
            }))),
            _ => Ok(Dyn),
        },
        ("_[?_]", [operand, _]) => Ok(Optional(Box::new(match operand {
            List(e) | Map(_, e) => (**e).clone(),
            _ => Dyn,
        }))),
        ("_?._", [operand, _]) => Ok(match operand {
            Map(_, v) => Optional(v.clone()),
            _ => Optional(Box::new(Dyn)),
        }),
        _ if name.starts_with('_') || name.starts_with('@') || name.starts_with('!') => Ok(Dyn),
        _ => return None,
    };
    Some(r)
}

fn arithmetic(name: &str, a: &Ty, b: &Ty) -> Typed {
    use Ty::*;
    match (name, a, b) {
        ("_+_" | "_-_" | "_*_" | "_/_", Int, Int)
        | ("_+_" | "_-_" | "_*_" | "_/_", Uint, Uint)
        | ("_+_" | "_-_" | "_*_" | "_/_", Double, Double)
        | ("_%_", Int, Int)
        | ("_%_", Uint, Uint)
        | ("_+_", String, String)
        | ("_+_", Bytes, Bytes)
        | ("_+_" | "_-_", Duration, Duration) => Ok(a.clone()),
        ("_+_", List(x), List(y)) => Ok(List(Box::new(join(x, y)))),
        ("_+_", Timestamp, Duration)
        | ("_+_", Duration, Timestamp)
        | ("_-_", Timestamp, Duration) => Ok(Timestamp),
        ("_-_", Timestamp, Timestamp) => Ok(Duration),
        _ => Err(()),
    }
}

/// A global function's result (unknown functions are `dyn`; global calls are not refused).
fn global(name: &str, args: &[Ty]) -> Ty {
    use Ty::*;
    let first = args.first().cloned().unwrap_or(Dyn);
    match name {
        "size" => Int,
        "int" => Int,
        "uint" => Uint,
        "double" => Double,
        "string" => String,
        "bytes" => Bytes,
        "bool" => Bool,
        "duration" => Duration,
        "timestamp" => Timestamp,
        "matches" | "isQuantity" | "isIP" | "isCIDR" | "isURL" | "isSemver" | "ip.isCanonical"
        | "sets.contains" | "sets.equivalent" | "sets.intersects" | "math.isInf" | "math.isNaN"
        | "math.isFinite" => Bool,
        "quantity" => Opaque(QUANTITY),
        "ip" => Opaque(IP),
        "cidr" => Opaque(CIDR),
        "url" => Opaque(URL),
        "semver" => Opaque(SEMVER),
        "sign" if matches!(first, Opaque(QUANTITY)) => Int,
        "math.ceil" | "math.floor" | "math.round" | "math.trunc" => Double,
        "math.abs" | "math.sign" if first.numeric() => first,
        "base64.encode" | "strings.quote" => String,
        "base64.decode" => Bytes,
        "lists.range" => List(Box::new(Int)),
        "optional.of" | "optional.ofNonZeroValue" => Optional(Box::new(first)),
        "optional.none" => Optional(Box::new(Empty)),
        _ => Dyn,
    }
}

/// A method's result; `Err` when the receiver (or an argument) has a definite type the
/// method has no overload for.
fn method(name: &str, target: &Ty, args: &[Ty]) -> Typed {
    use Ty::*;
    // Arguments of definite types must be these (a vague one matches).
    let params = |want: &[&[Ty]]| -> Typed {
        let fits = want.iter().any(|w| {
            w.len() == args.len()
                && w.iter().zip(args).all(|(w, a)| {
                    !a.definite()
                        || !w.definite()
                        || std::mem::discriminant(w) == std::mem::discriminant(a)
                })
        });
        if fits { Ok(Dyn) } else { Err(()) }
    };
    let elem = match target {
        List(e) => (**e).clone(),
        _ => Dyn,
    };
    // Methods of strings (and lists for a few): all their receivers are listed, so a
    // definite receiver of another type has no overload.
    let string_method: Option<(&[&[Ty]], Ty)> = match name {
        "contains" | "startsWith" | "endsWith" | "matches" => Some((&[&[String]], Bool)),
        "charAt" => Some((&[&[Int]], String)),
        "lowerAscii" | "upperAscii" | "trim" => Some((&[&[]], String)),
        "replace" => Some((&[&[String, String], &[String, String, Int]], String)),
        "split" => Some((&[&[String], &[String, Int]], List(Box::new(String)))),
        "substring" => Some((&[&[Int], &[Int, Int]], String)),
        "find" => Some((&[&[String]], String)),
        "findAll" => Some((&[&[String], &[String, Int]], List(Box::new(String)))),
        "format" => Some((&[&[List(Box::new(Dyn))]], String)),
        _ => None,
    };
    if let Some((want, result)) = string_method {
        return match target {
            String => params(want).map(|_| result),
            t if t.definite() => Err(()),
            _ => Ok(result),
        };
    }
    match name {
        "size" => match target {
            String | Bytes | List(_) | Map(..) if args.is_empty() => Ok(Int),
            t if t.definite() => Err(()),
            _ => Ok(Int),
        },
        "indexOf" | "lastIndexOf" => match target {
            String => params(&[&[String], &[String, Int]]).map(|_| Int),
            List(_) => Ok(Int),
            t if t.definite() => Err(()),
            _ => Ok(Int),
        },
        "reverse" => match target {
            String | List(_) => Ok(target.clone()),
            t if t.definite() => Err(()),
            _ => Ok(Dyn),
        },
        "join" => match target {
            List(e) if e.definite() && **e != String => Err(()),
            List(_) => params(&[&[], &[String]]).map(|_| String),
            t if t.definite() => Err(()),
            _ => Ok(String),
        },
        "isSorted" | "sum" | "min" | "max" | "slice" | "flatten" | "distinct" | "sort" => {
            match target {
                List(_) => Ok(match name {
                    "isSorted" => Bool,
                    "sum" | "min" | "max" => elem,
                    "flatten" => List(Box::new(Dyn)),
                    _ => target.clone(),
                }),
                t if t.definite() => Err(()),
                _ => Ok(if name == "isSorted" { Bool } else { Dyn }),
            }
        }
        "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate"
        | "getDayOfWeek" => match target {
            Timestamp => params(&[&[], &[String]]).map(|_| Int),
            t if t.definite() => Err(()),
            _ => Ok(Int),
        },
        "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds" => match target {
            Timestamp => params(&[&[], &[String]]).map(|_| Int),
            Duration if args.is_empty() => Ok(Int),
            t if t.definite() => Err(()),
            _ => Ok(Int),
        },
        // Kubernetes' library types and optionals: typed results, receivers not refused
        // unless a plain scalar or container.
        _ => {
            let result = match name {
                "isGreaterThan"
                | "isLessThan"
                | "isInteger"
                | "isUnspecified"
                | "isLoopback"
                | "isLinkLocalMulticast"
                | "isLinkLocalUnicast"
                | "isGlobalUnicast"
                | "containsIP"
                | "containsCIDR"
                | "hasValue" => Some(Bool),
                "compareTo" | "sign" | "asInteger" | "family" | "prefixLength" | "major"
                | "minor" | "patch" => Some(Int),
                "asApproximateFloat" => Some(Double),
                "add" | "sub" => Some(Opaque(QUANTITY)),
                "masked" => Some(Opaque(CIDR)),
                "ip" => Some(Opaque(IP)),
                "getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath" => {
                    Some(String)
                }
                "getQuery" => Some(Map(Box::new(String), Box::new(List(Box::new(String))))),
                "value" => Some(match target {
                    Optional(t) => (**t).clone(),
                    _ => Dyn,
                }),
                "orValue" => Some(match target {
                    Optional(t) => join(t, args.first().unwrap_or(&Dyn)),
                    _ => Dyn,
                }),
                "or" => Some(match (target, args.first()) {
                    (Optional(a), Some(Optional(b))) => Optional(Box::new(join(a, b))),
                    _ => Dyn,
                }),
                _ => None,
            };
            match result {
                Some(_) if target.definite() => Err(()),
                Some(t) => Ok(t),
                None => Ok(Dyn),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::cel::compile;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "replicas": {"type": "integer"},
            "ratio": {"type": "number"},
            "name": {"type": "string"},
            "enabled": {"type": "boolean"},
            "items": {"type": "array", "items": {"type": "string"}},
            "ports": {"type": "array", "items": {"type": "object", "properties": {
                "port": {"type": "integer"}, "name": {"type": "string"}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "grace": {"type": "string", "format": "duration"},
            "data": {"type": "string", "format": "byte"},
            "port": {"x-kubernetes-int-or-string": true},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "memory": {"type": "string"},
            "cidrs": {"type": "array", "items": {"type": "string"}},
            "x-y": {"type": "integer"},
            "nested": {"type": "object", "properties": {"a": {"type": "integer"}}},
        }})
    }

    fn run(rule: &str, optional: bool, want: Want) -> Option<Failure> {
        let c = compile(rule);
        let p = match &c.program {
            Ok(p) => p,
            Err(e) => panic!("{rule} does not compile: {e}"),
        };
        check(p, rule, &schema_type(&schema(), true), optional, want)
    }

    fn accepted(rules: &[&str]) {
        let refused: Vec<_> = rules
            .iter()
            .filter_map(|rule| run(rule, false, Want::Bool).map(|f| (rule, f)))
            .collect();
        assert!(refused.is_empty(), "{refused:#?}");
    }

    /// The first line of the error (the `ERROR: <input>:L:C: message` part).
    fn refused(rule: &str) -> String {
        match run(rule, false, Want::Bool) {
            Some(f) => f.detail(""),
            None => panic!("{rule} was accepted"),
        }
    }

    #[test]
    fn well_typed_rules_are_accepted() {
        accepted(&[
            "self.replicas > 0 && self.replicas <= 10",
            "self.replicas < 1.5 && self.ratio > 1 && 1u < 2 && self.ratio >= 0u",
            "self.replicas == 1.0 || self.ratio == 1",
            "self.replicas + 1 > self.replicas * 2 - 3 / 1 % 2",
            "self.ratio * 2.0 > 1.5",
            "double(self.replicas) + self.ratio > 0.0 && int(self.ratio) + self.replicas > 0",
            "self.name.size() < 10 && size(self.name) > 0",
            "self.name.startsWith('a') && self.name.endsWith('z') && self.name.contains('m')",
            "self.name.matches('^[a-z]+$') && matches(self.name, 'x')",
            "self.name.lowerAscii() == self.name && self.name.upperAscii() != ''",
            "self.name.split('-').size() == 2 && self.name.split('-', 2)[0] == 'a'",
            "self.name.substring(1) == 'x' && self.name.substring(0, 2) == 'xy'",
            "self.name.charAt(0) == 'a' && self.name.indexOf('a') == 0 && self.name.lastIndexOf('a', 3) >= -1",
            "self.name.replace('a', 'b') == 'b' && self.name.trim() == self.name",
            "self.items.join(',') == 'a,b' && self.items.join() == 'ab'",
            "'%s-%d'.format([self.name, self.replicas]) != ''",
            "self.items.all(x, x.size() > 1) && self.items.exists(x, x == 'a')",
            "self.items.exists_one(x, x.startsWith('a'))",
            "self.items.map(x, x.size()).all(n, n > 0)",
            "self.items.filter(x, x != '').size() == self.items.size()",
            "self.items.map(x, x != '', x + '!').all(s, s.endsWith('!'))",
            "self.ports.all(p, p.port > 0 && p.name != '')",
            "self.ports.map(p, p.port).sum() < 100 && self.ports.map(p, p.port).max() < 65536",
            "self.labels.all(k, k.size() < 64 && self.labels[k].size() < 64)",
            "self.labels.exists(k, self.labels[k] == 'v') && 'app' in self.labels",
            "self.labels.app == 'x' && has(self.labels.app) && has(self.nested.a)",
            "'a' in self.items && !('b' in self.items)",
            "self.items.isSorted() && self.items.indexOf('a') == 0 && self.items.min() == 'a'",
            "self.items.slice(0, 1) == ['a'] && self.items.distinct().size() > 0",
            "self.end > self.start && self.end - self.start > duration('1h')",
            "self.start + self.grace < self.end && self.end - self.grace > self.start",
            "self.day == timestamp('2024-03-01T00:00:00Z') && self.day.getFullYear() == 2024",
            "self.start.getHours('America/New_York') < 12 && self.grace.getMinutes() > 0",
            "self.grace > duration('1h') && self.grace + duration('1s') != self.grace",
            "self.data == b'hi' && self.data.size() == 2 && self.data + b'!' != self.data",
            "self.port == 8080 || self.port == 'http'",
            "self.port > 0",
            "self.free.anything.goes == 1 && self.free.x.size() > self.free.y",
            "self.x__dash__y == 3",
            "self.metadata.name.size() < 64 && self.kind == 'K' && self.apiVersion != ''",
            "self.metadata.namespace == 'x'",
            "quantity(self.memory).isLessThan(quantity('1Gi')) && isQuantity(self.memory)",
            "quantity(self.memory).compareTo(quantity('1')) >= 0 && quantity(self.memory).asInteger() > 0",
            "quantity(self.memory).add(1).sub(quantity('1')).asApproximateFloat() > 0.0",
            "isIP(self.name) && ip(self.name).family() == 4 && ip(self.name).isLoopback()",
            "ip.isCanonical(self.name) && cidr(self.name).containsIP(self.name)",
            "self.cidrs.all(c, isCIDR(c) && cidr(c).prefixLength() <= 24 && cidr(c).masked() == cidr(c))",
            "cidr('10.0.0.0/8').ip().family() == 4",
            "isURL(self.name) && url(self.name).getScheme() == 'https' && url(self.name).getHost() != ''",
            "url(self.name).getQuery()['a'][0] == 'b'",
            "isSemver(self.name) && semver(self.name).major() >= 1 && semver(self.name).isLessThan(semver('2.0.0'))",
            "sets.contains(self.items, ['a']) && sets.intersects(self.items, ['b']) && sets.equivalent(self.items, [])",
            "self.?name.orValue('') == '' && self.?nested.a.orValue(0) == 0",
            "self.?labels.app.hasValue() && self.labels[?'app'].orValue('x') == 'x'",
            "optional.of(self.name).value() == self.name && optional.none().orValue(1) == 1",
            "math.ceil(self.ratio) >= self.ratio && math.abs(-1) == 1",
            "base64.encode(self.data) != '' && base64.decode('aGk=') == self.data",
            "self.name.reverse() != ''",
            "[1, 2].all(i, [3].all(j, i < j))",
            "type(self.name) == type('')",
            "dyn(self.replicas) == 'a'",
            "self.replicas == null || null == self.name",
            "[1, 'a'].size() == 2 && {'a': 1, 'b': 'x'}.size() == 2",
            "(self.replicas > 0 ? self.name : self.replicas) == 1",
            "self.items.sortBy(x, x.size()).size() == 2",
            "self == oldSelf && self.replicas >= oldSelf.replicas",
            "[self.start, self.end].all(t, t.getMonth() < 12)",
            "self.ports.exists(p, p.port == self.replicas) && self.ports[0].port > 0",
            "self.nested == oldSelf.nested && self.nested != {'a': 1}",
        ]);
        for rule in [
            "oldSelf.hasValue() ? self.replicas >= oldSelf.value().replicas : true",
            "oldSelf.orValue(self).name == self.name",
        ] {
            assert_eq!(run(rule, true, Want::Bool), None, "{rule}");
        }
        assert_eq!(
            run("'too big: ' + string(self.replicas)", false, Want::String),
            None
        );
        assert_eq!(run("self.name", false, Want::String), None);
    }

    #[test]
    fn ill_typed_rules_are_refused_in_cel_go_words() {
        assert_eq!(
            refused("self.replicas > 'a'"),
            "ERROR: <input>:1:15: found no matching overload for '_>_' applied to '(int, string)'\n | self.replicas > 'a'\n | ..............^"
        );
        assert_eq!(
            refused("self.name.size() == true"),
            "ERROR: <input>:1:18: found no matching overload for '_==_' applied to '(int, bool)'\n | self.name.size() == true\n | .................^"
        );
        assert!(
            refused("self.items.all(x, x > 1)").starts_with(
                "ERROR: <input>:1:21: found no matching overload for '_>_' applied to '(string, int)'"
            ),
            "{}",
            refused("self.items.all(x, x > 1)")
        );
        for (rule, message) in [
            (
                "self.replicas + 1.5 > 0.0",
                "'_+_' applied to '(int, double)'",
            ),
            (
                "self.name - 'a' == ''",
                "'_-_' applied to '(string, string)'",
            ),
            (
                "self.enabled && self.replicas",
                "'_&&_' applied to '(bool, int)'",
            ),
            ("!self.name", "'!_' applied to '(string)'"),
            ("self.replicas.size() > 0", "'size' applied to 'int.()'"),
            (
                "self.name.startsWith(1)",
                "'startsWith' applied to 'string.(int)'",
            ),
            (
                "self.replicas.startsWith('a')",
                "'startsWith' applied to 'int.(string)'",
            ),
            (
                "self.start > self.grace",
                "'_>_' applied to '(google.protobuf.Timestamp, google.protobuf.Duration)'",
            ),
            (
                "self.start + self.start > self.end",
                "'_+_' applied to '(google.protobuf.Timestamp, google.protobuf.Timestamp)'",
            ),
            (
                "self.labels[1] == 'a'",
                "'_[_]' applied to '(map(string, string), int)'",
            ),
            (
                "self.items['a'] == 'a'",
                "'_[_]' applied to '(list(string), string)'",
            ),
            ("self.name[0] == 'a'", "'_[_]' applied to '(string, int)'"),
            ("1 in self.items", "'@in' applied to '(int, list(string))'"),
            (
                "self.ports.all(p, p.port == 'x')",
                "'_==_' applied to '(int, string)'",
            ),
            (
                "self.items.map(x, x.size()).all(n, n.startsWith('a'))",
                "'startsWith' applied to 'int.(string)'",
            ),
            (
                "self.replicas ? true : false",
                "'_?_:_' applied to '(int, bool, bool)'",
            ),
            (
                "self.items.join(',') == 1",
                "'_==_' applied to '(string, int)'",
            ),
            (
                "self.grace.getFullYear() == 1",
                "'getFullYear' applied to 'google.protobuf.Duration.()'",
            ),
            (
                "quantity(self.memory).asInteger() == 'a'",
                "'_==_' applied to '(int, string)'",
            ),
            ("self.data == 'hi'", "'_==_' applied to '(bytes, string)'"),
        ] {
            let got = refused(rule);
            assert!(
                got.contains(&format!("found no matching overload for {message}")),
                "{rule}: {got}"
            );
        }
        assert_eq!(
            refused("self.replicas.size() > 0"),
            "ERROR: <input>:1:19: found no matching overload for 'size' applied to 'int.()'\n | self.replicas.size() > 0\n | ..................^"
        );
        assert_eq!(
            refused("self.name.all(c, c == 'a')"),
            "ERROR: <input>:1:5: expression of type 'string' cannot be the range of a comprehension (must be list, map, or dynamic)\n | self.name.all(c, c == 'a')\n | ....^"
        );
        assert_eq!(
            refused("self.name.x == 1"),
            "ERROR: <input>:1:10: type 'string' does not support field selection\n | self.name.x == 1\n | .........^"
        );
        // A comprehension's predicate must be a bool.
        assert!(refused("self.items.all(x, x.size())").contains("'_&&_' applied to '(bool, int)'"));
        assert_eq!(
            refused("self.ports.all(p, p.nosuch > 0)"),
            "ERROR: <input>:1:20: undefined field 'nosuch'\n | self.ports.all(p, p.nosuch > 0)\n | ...................^"
        );
        // Each error, in source order.
        assert_eq!(
            refused("self.name > 1 || self.replicas > 'a'")
                .matches("ERROR:")
                .count(),
            2
        );
    }

    #[test]
    fn result_types() {
        for rule in [
            "self.replicas",
            "self.name + 'x'",
            "[true]",
            "self.replicas > 0 ? 1 : 2",
        ] {
            assert_eq!(
                run(rule, false, Want::Bool),
                Some(Failure::Result("cel expression must evaluate to a bool")),
                "{rule}"
            );
        }
        for rule in ["self.replicas", "self.enabled", "self.items"] {
            assert_eq!(
                run(rule, false, Want::String),
                Some(Failure::Result(
                    "messageExpression must evaluate to a string"
                )),
                "{rule}"
            );
        }
        // Unknown types are not refused.
        assert_eq!(run("self.port", false, Want::Bool), None);
        assert_eq!(run("self.free.msg", false, Want::String), None);
    }
}
