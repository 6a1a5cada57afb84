//! Values typed by the structural schema, as upstream's `UnstructuredToVal`: strings of
//! `format: date-time`/`date` are timestamps, `format: duration` durations
//! (`strfmt.ParseDuration`: Go's forms and `3 days`), `format: byte` bytes, `type: number`
//! doubles (also when written as an integer); property names are escaped
//! (`foo-bar` → `foo__dash__bar`, `namespace` → `__namespace__`); an int-or-string stays
//! what it is. A string its format cannot read stays a string (upstream: an error value, but
//! the schema's format check refuses such objects before the rules matter).
//!
//! [`undefined_field`] is upstream's compile-time `undefined field 'x'` for a selection
//! `self.a.b` of a property the schema does not declare; it only follows plain selections
//! from `self`/`oldSelf` through objects with `properties` (no type checker: selections
//! through indexes, calls or comprehension variables are not checked).

use std::sync::LazyLock;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Program, Value as Cel};
use serde_json::Value;

use super::{ENV, to_cel};

/// CEL's reserved words a property name is escaped from (upstream's `celReservedSymbols`).
pub(crate) const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// Upstream's `cel.Escape`: the name a property has in CEL, `None` if it cannot be accessed.
pub(super) fn escape(ident: &str) -> Option<String> {
    if ident.is_empty() || ident.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if RESERVED.contains(&ident) {
        return Some(format!("__{ident}__"));
    }
    let mut out = String::with_capacity(ident.len());
    let mut chars = ident.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push_str("__underscores__");
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// `v` as CEL sees it under `schema`.
pub(super) fn to_typed(v: &Value, schema: &Value) -> Cel {
    if flag(schema, "x-kubernetes-int-or-string") {
        return to_cel(v);
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            let entries = map.iter().map(|(k, child)| {
                if let Some(props) = props.filter(|_| !embedded || !is_type_meta(k)) {
                    let name = escape(k).unwrap_or_else(|| k.clone());
                    let value = match props.get(k) {
                        Some(s) => to_typed(child, s),
                        None => to_cel(child),
                    };
                    (name, value)
                } else if let Some(s) = extra.filter(|_| props.is_none()) {
                    (k.clone(), to_typed(child, s))
                } else {
                    (k.clone(), to_cel(child))
                }
            });
            Cel::Map(CelMap {
                map: std::sync::Arc::new(
                    entries
                        .map(|(k, v)| (Key::String(std::sync::Arc::new(k)), v))
                        .collect(),
                ),
            })
        }
        Value::Array(items) => match schema.get("items").filter(|i| i.is_object()) {
            Some(s) => Cel::List(std::sync::Arc::new(
                items.iter().map(|i| to_typed(i, s)).collect(),
            )),
            None => to_cel(v),
        },
        Value::String(s) => {
            let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
            let typed = match format {
                "date-time" => timestamp(s),
                "date" => is_full_date(s)
                    .then(|| format!("{s}T00:00:00Z"))
                    .and_then(|t| timestamp(&t)),
                "duration" => duration(s),
                "byte" => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .ok()
                        .map(|b| Cel::Bytes(std::sync::Arc::new(b)))
                }
                _ => None,
            };
            typed.unwrap_or_else(|| to_cel(v))
        }
        Value::Number(n) if schema.get("type").and_then(Value::as_str) == Some("number") => {
            n.as_f64().map(Cel::Float).unwrap_or_else(|| to_cel(v))
        }
        _ => to_cel(v),
    }
}

fn is_type_meta(k: &str) -> bool {
    matches!(k, "apiVersion" | "kind" | "metadata")
}

fn is_full_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// `strfmt.ParseDateTime`'s layouts brought to RFC 3339 (a missing zone is UTC, a missing
/// second `:00`, a zone without colon gets one), then parsed.
fn timestamp(s: &str) -> Option<Cel> {
    if s.len() < 16 || !s.is_char_boundary(10) || !is_full_date(&s[..10]) {
        return None;
    }
    let (date, rest) = s.split_at(10);
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let zone_at = rest
        .char_indices()
        .skip(1)
        .find(|(_, c)| matches!(c, 'Z' | 'z' | '+' | '-'))
        .map_or(rest.len(), |(i, _)| i);
    let (time, zone) = rest.split_at(zone_at);
    let time = if time.len() == 5 {
        format!("{time}:00")
    } else {
        time.to_string()
    };
    let zone = match zone {
        "" | "z" => "Z".to_string(),
        z if z.len() == 5 && !z.contains(':') => format!("{}:{}", &z[..3], &z[3..]),
        z => z.to_string(),
    };
    format!("{date}T{time}{zone}")
        .parse()
        .ok()
        .map(Cel::Timestamp)
}

/// `duration(s)`, the standard library's conversion, used to make duration values.
static DURATION: LazyLock<Option<Program>> = LazyLock::new(|| ENV.compile("duration(s)").ok());

fn go_duration(text: &str) -> Option<Cel> {
    let program = DURATION.as_ref()?;
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_variable_from_value("s", text.to_string());
    program.execute(&ctx).ok()
}

static DURATION_TERM: LazyLock<Option<regex::Regex>> =
    LazyLock::new(|| regex::Regex::new(r"((\d+)\s*([A-Za-zµ]+))").ok());

/// `strfmt.ParseDuration`: Go's `time.ParseDuration`, else `<n> <unit>` terms (`3 days`,
/// `1 wk 2 hr`).
fn duration(s: &str) -> Option<Cel> {
    if let Some(d) = go_duration(s) {
        return Some(d);
    }
    const UNITS: &[(&[&str], i128)] = &[
        (&["ns", "nano"], 1),
        (&["us", "µs", "micro"], 1_000),
        (&["ms", "milli"], 1_000_000),
        (&["s", "sec"], 1_000_000_000),
        (&["m", "min"], 60_000_000_000),
        (&["h", "hr", "hour"], 3_600_000_000_000),
        (&["d", "day"], 86_400_000_000_000),
        (&["w", "wk", "week"], 604_800_000_000_000),
    ];
    let re = DURATION_TERM.as_ref()?;
    let mut total: i128 = 0;
    let mut ok = false;
    for caps in re.captures_iter(s) {
        let factor: i128 = caps.get(2)?.as_str().parse().ok()?;
        let unit = caps.get(3)?.as_str().trim().to_lowercase();
        for (variants, nanos) in UNITS {
            let last = variants.len() - 1;
            for (i, v) in variants.iter().enumerate() {
                if (i == last && unit.starts_with(v)) || unit.eq_ignore_ascii_case(v) {
                    ok = true;
                    total = total.checked_add(factor.checked_mul(*nanos)?)?;
                }
            }
        }
    }
    if !ok {
        return None;
    }
    let (secs, nanos) = (total / 1_000_000_000, total % 1_000_000_000);
    go_duration(&format!("{secs}s{nanos}ns"))
}

/// The schema under a selection of `field` from a value of `schema`: `Ok(None)` when it
/// cannot be told (maps, preserved unknown fields, embedded resources' metadata),
/// `Err(())` when the field is not declared.
fn select<'s>(schema: &'s Value, field: &str, root: bool) -> Result<Option<&'s Value>, ()> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(None);
    };
    if flag(schema, "x-kubernetes-preserve-unknown-fields")
        || schema
            .get("additionalProperties")
            .is_some_and(|a| a.is_object() || a == &Value::Bool(true))
    {
        return Ok(None);
    }
    let type_meta = root || flag(schema, "x-kubernetes-embedded-resource");
    if type_meta && is_type_meta(field) {
        return Ok(props.get(field).filter(|_| field != "metadata"));
    }
    match props
        .iter()
        .find(|(k, _)| escape(k).as_deref() == Some(field))
    {
        Some((_, s)) => Ok(Some(s)),
        None => Err(()),
    }
}

/// The first selection in `expr` of a field `schema` (the schema of `self`) does not declare,
/// as cel-go reports it: `ERROR: <input>:L:C: undefined field 'x'` with the source line.
pub(super) fn undefined_field(
    program: &Program,
    schema: &Value,
    root: bool,
    source: &str,
) -> Option<String> {
    /// The schema of the value `e` stands for, if `e` is `self`/`oldSelf` or a selection of
    /// one; `Some(None)` if that value's schema is unknown.
    fn resolve<'s>(
        e: &IdedExpr,
        schema: &'s Value,
        root: bool,
        found: &mut Option<(u64, String)>,
    ) -> Option<(&'s Value, bool)> {
        match &e.expr {
            Expr::Ident(n) if n == "self" || n == "oldSelf" => Some((schema, root)),
            Expr::Select(s) => {
                let (parent, parent_root) = resolve(&s.operand, schema, root, found)?;
                match select(parent, &s.field, parent_root) {
                    Ok(Some(child)) => Some((child, false)),
                    Ok(None) => None,
                    Err(()) => {
                        if found.is_none() {
                            *found = Some((e.id, s.field.clone()));
                        }
                        None
                    }
                }
            }
            _ => None,
        }
    }
    fn walk(e: &IdedExpr, schema: &Value, root: bool, found: &mut Option<(u64, String)>) {
        if found.is_some() {
            return;
        }
        match &e.expr {
            Expr::Select(s) => {
                resolve(e, schema, root, found);
                walk(&s.operand, schema, root, found);
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    walk(t, schema, root, found);
                }
                c.args.iter().for_each(|a| walk(a, schema, root, found));
            }
            Expr::Comprehension(c) => {
                for x in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    walk(x, schema, root, found);
                }
            }
            Expr::List(l) => l.elements.iter().for_each(|x| walk(x, schema, root, found)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => walk(&f.value, schema, root, found),
                        EntryExpr::MapEntry(me) => {
                            walk(&me.key, schema, root, found);
                            walk(&me.value, schema, root, found);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut found = None;
    walk(program.expression(), schema, root, &mut found);
    let (id, field) = found?;
    let offset = program
        .source_info()
        .offset_for(id)
        .map_or(0, |(start, _)| start as usize);
    Some(at(source, offset, &format!("undefined field '{field}'")))
}

/// cel-go's `ERROR: <input>:L:C: <message>` with the source line and a caret under byte
/// `offset` of `source`.
pub(super) fn at(source: &str, offset: usize, message: &str) -> String {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count();
    let line = source[line_start..].lines().next().unwrap_or("");
    let mut caret = String::new();
    for c in line.chars().take(col) {
        caret.push(if c.len_utf8() > 1 { '\u{ff0e}' } else { '.' });
    }
    caret.push('^');
    format!(
        "ERROR: <input>:{line_no}:{}: {message}\n | {}\n | {caret}",
        col + 1,
        line.replace('\t', " ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_like_upstream() {
        assert_eq!(escape("foo-bar").as_deref(), Some("foo__dash__bar"));
        assert_eq!(escape("a.b/c").as_deref(), Some("a__dot__b__slash__c"));
        assert_eq!(escape("a__b").as_deref(), Some("a__underscores__b"));
        assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
        assert_eq!(escape("1abc"), None);
        assert_eq!(escape("a b"), None);
    }

    #[test]
    fn formats_become_typed_values() {
        let schema = json!({"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"},
            "every": {"type": "string", "format": "duration"},
            "ratio": {"type": "number"},
            "x-y": {"type": "string"},
        }});
        let v = to_typed(
            &json!({"at": "2024-02-29T12:30:00Z", "every": "3 days", "ratio": 1, "x-y": "s"}),
            &schema,
        );
        let Cel::Map(m) = v else {
            panic!("not a map: {v:?}");
        };
        let get = |k: &str| {
            m.map
                .get(&Key::String(std::sync::Arc::new(k.into())))
                .cloned()
        };
        assert!(
            matches!(get("at"), Some(Cel::Timestamp(_))),
            "{:?}",
            get("at")
        );
        assert!(
            matches!(get("every"), Some(Cel::Duration(_))),
            "{:?}",
            get("every")
        );
        assert_eq!(get("ratio"), Some(Cel::Float(1.0)));
        assert_eq!(get("x__dash__y"), Some(Cel::String("s".to_string().into())));
        assert!(timestamp("2024-02-29T12:30").is_some());
        assert!(timestamp("2024-02-29 12:30:00+0200").is_some());
        assert!(timestamp("yesterday").is_none());
    }
}
