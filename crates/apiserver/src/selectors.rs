//! Label and field selectors, parsed and matched as upstream
//! (`k8s.io/apimachinery/pkg/labels` and `.../fields`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

/// What label and field selectors read of an object: a decoded object, or the labels and
/// fields the watch cache keeps of one (`watch_cache::CachedObject`).
pub(crate) trait Selectable {
    /// The value of the label `key` (labels whose value is not a string do not count).
    fn label(&self, key: &str) -> Option<&str>;
    /// The field at the dotted `path` as field selectors compare it ([`field_text`]).
    fn field(&self, path: &str) -> Cow<'_, str>;
}

/// The value at the dotted `path` of `obj`, if there is one.
pub(crate) fn field_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |v, part| v.get(part))
}

/// A field's value as a field selector compares it: a string as itself, a missing field or
/// `null` as empty, anything else as its JSON text (`true`, `3`).
pub(crate) fn field_text(v: Option<&Value>) -> Cow<'_, str> {
    match v {
        Some(Value::String(s)) => Cow::Borrowed(s),
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

impl Selectable for Value {
    fn label(&self, key: &str) -> Option<&str> {
        self.get("metadata")?.get("labels")?.get(key)?.as_str()
    }

    fn field(&self, path: &str) -> Cow<'_, str> {
        field_text(field_at(self, path))
    }
}

/// The operator of one label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelOp {
    /// `key=value`, `key==value`, `key in (a,b)`.
    In(Vec<String>),
    /// `key!=value`, `key notin (a,b)`: true when the key is absent too.
    NotIn(Vec<String>),
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>n`
    Gt(i64),
    /// `key<n`
    Lt(i64),
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requirement {
    pub(crate) key: String,
    pub(crate) op: LabelOp,
}

/// A parsed label selector: all requirements must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    pub(crate) requirements: Vec<Requirement>,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A small tokenizer-free parser over the selector text.
struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        while self.s[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }
    fn word(&mut self, ok: fn(char) -> bool) -> &'a str {
        self.skip_ws();
        let start = self.pos;
        while let Some(c) = self.s[self.pos..].chars().next() {
            if !ok(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        &self.s[start..self.pos]
    }
    fn at_end_of_requirement(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.s.len() || self.s[self.pos..].starts_with(',')
    }
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
}

fn parse_err(sel: &str, what: impl std::fmt::Display) -> String {
    format!("unable to parse requirement: {what} (in selector {sel:?})")
}

fn validate_key(key: &str, sel: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(is_value_char);
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && crate::validation::validate_name(crate::validation::NameRule::Subdomain, p)
                .is_empty()
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(parse_err(
            sel,
            format!(
                "invalid label key {key:?}: name part must consist of alphanumeric characters, \
                 '-', '_' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

fn validate_value(value: &str, sel: &str) -> Result<(), String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value.chars().all(is_value_char));
    if ok {
        Ok(())
    } else {
        Err(parse_err(
            sel,
            format!(
                "invalid label value: {value:?}: a valid label must be an empty string or \
                 consist of alphanumeric characters, '-', '_' or '.', and must start and end \
                 with an alphanumeric character"
            ),
        ))
    }
}

/// A label selector object (`matchLabels`, `matchExpressions`) as selector text, or a plain
/// map (replicationcontrollers) as `k=v,...`.
pub(crate) fn selector_text(sel: Option<&Value>) -> String {
    let Some(sel) = sel.and_then(Value::as_object) else {
        return String::new();
    };
    let has_structure = sel.contains_key("matchLabels") || sel.contains_key("matchExpressions");
    let mut parts = Vec::new();
    let labels = if has_structure {
        sel.get("matchLabels").and_then(Value::as_object)
    } else {
        Some(sel)
    };
    if let Some(labels) = labels {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub(crate) fn parse(sel: &str) -> Result<Self, String> {
        let mut p = Parser { s: sel, pos: 0 };
        let mut requirements = Vec::new();
        p.skip_ws();
        if p.pos == sel.len() {
            return Ok(LabelSelector::default());
        }
        loop {
            let negated = p.eat("!");
            let key = p.word(is_key_char).to_string();
            if key.is_empty() {
                return Err(parse_err(
                    sel,
                    format!("found {:?}, expected: identifier", p.rest()),
                ));
            }
            validate_key(&key, sel)?;
            let op = if negated {
                LabelOp::DoesNotExist
            } else if p.at_end_of_requirement() {
                LabelOp::Exists
            } else if p.eat("==") || p.eat("=") {
                let v = p.word(is_value_char).to_string();
                validate_value(&v, sel)?;
                LabelOp::In(vec![v])
            } else if p.eat("!=") {
                let v = p.word(is_value_char).to_string();
                validate_value(&v, sel)?;
                LabelOp::NotIn(vec![v])
            } else if p.eat(">") || p.eat("<") {
                let gt = p.s[..p.pos].ends_with('>');
                let v = p.word(is_value_char);
                let n: i64 = v.parse().map_err(|_| {
                    parse_err(
                        sel,
                        format!(
                            "for 'Gt', 'Lt' operators, the value must be an integer, got {v:?}"
                        ),
                    )
                })?;
                if gt { LabelOp::Gt(n) } else { LabelOp::Lt(n) }
            } else {
                let word = p.word(|c| c.is_ascii_alphabetic());
                let values = match word {
                    "in" | "notin" => parse_set(&mut p, sel)?,
                    _ => {
                        return Err(parse_err(
                            sel,
                            format!(
                                "found {:?}, expected: in, notin, =, ==, !=, gt, lt",
                                format!("{word}{}", p.rest())
                            ),
                        ));
                    }
                };
                if word == "in" {
                    LabelOp::In(values)
                } else {
                    LabelOp::NotIn(values)
                }
            };
            if negated && !p.at_end_of_requirement() {
                return Err(parse_err(
                    sel,
                    format!("found {:?}, expected: ',' or end of string", p.rest()),
                ));
            }
            requirements.push(Requirement { key, op });
            if !p.at_end_of_requirement() {
                return Err(parse_err(
                    sel,
                    format!("found {:?}, expected: ',' or end of string", p.rest()),
                ));
            }
            if !p.eat(",") {
                break;
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_labels_of(&|key: &str| labels.get(key).map(String::as_str))
    }

    /// Whether the labels `label` looks up satisfy every requirement.
    pub(crate) fn matches_labels_of<'a>(&self, label: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| {
            let v = label(&r.key);
            match &r.op {
                LabelOp::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
                LabelOp::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
                LabelOp::Exists => v.is_some(),
                LabelOp::DoesNotExist => v.is_none(),
                LabelOp::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                LabelOp::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

fn parse_set(p: &mut Parser<'_>, sel: &str) -> Result<Vec<String>, String> {
    if !p.eat("(") {
        return Err(parse_err(
            sel,
            format!("found {:?}, expected: '('", p.rest()),
        ));
    }
    let mut values = Vec::new();
    loop {
        let v = p.word(is_value_char).to_string();
        validate_value(&v, sel)?;
        values.push(v);
        if p.eat(")") {
            return Ok(values);
        }
        if !p.eat(",") {
            return Err(parse_err(
                sel,
                format!("found {:?}, expected: ',' or ')'", p.rest()),
            ));
        }
    }
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldTerm {
    pub(crate) field: String,
    pub(crate) value: String,
    pub(crate) equal: bool,
}

/// A parsed field selector: `a=b,c!=d` (also `==`); values may escape `\,`, `\=`, `\\`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    pub(crate) terms: Vec<FieldTerm>,
}

/// Splits on unescaped `sep`.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next()
                && let Some(last) = parts.last_mut()
            {
                last.push('\\');
                last.push(n);
            }
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    /// Parses the `fieldSelector` parameter, accepting only `metadata.name`,
    /// `metadata.namespace` and the resource's own `fields`.
    pub(crate) fn parse(sel: &str, fields: &[&str]) -> Result<Self, String> {
        let mut terms = Vec::new();
        if sel.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        for part in split_unescaped(sel, ',') {
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(format!(
                    "invalid selector: '{sel}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" && !fields.contains(&field)
            {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push(FieldTerm {
                field: field.to_string(),
                value: unescape(value),
                equal,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Whether the object's fields satisfy every term. A missing field reads as empty, a
    /// boolean or number as its text.
    pub(crate) fn matches<O: Selectable + ?Sized>(&self, obj: &O) -> bool {
        self.terms
            .iter()
            .all(|t| (obj.field(&t.field) == t.value.as_str()) == t.equal)
    }

    /// The value the selector pins `metadata.name` to, if it does (lets a list read one key).
    pub(crate) fn exact_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.equal && t.field == "metadata.name")
            .map(|t| t.value.as_str())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn equality_and_inequality() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(sel("app=web").matches(&l));
        assert!(sel("app==web").matches(&l));
        assert!(sel("app = web , tier=front").matches(&l));
        assert!(!sel("app=db").matches(&l));
        assert!(sel("app!=db").matches(&l));
        assert!(sel("missing!=x").matches(&l), "!= holds for an absent key");
        assert!(!sel("app!=web").matches(&l));
        assert!(sel("").matches(&l));
    }

    #[test]
    fn sets_and_existence() {
        let l = labels(&[("env", "prod"), ("example.com/team", "a")]);
        assert!(sel("env in (prod, staging)").matches(&l));
        assert!(!sel("env in (dev)").matches(&l));
        assert!(sel("env notin (dev,qa)").matches(&l));
        assert!(!sel("env notin (prod)").matches(&l));
        assert!(sel("other notin (x)").matches(&l));
        assert!(sel("env").matches(&l));
        assert!(sel("example.com/team").matches(&l));
        assert!(!sel("!env").matches(&l));
        assert!(sel("!nope").matches(&l));
        assert!(sel("env,!nope,example.com/team=a").matches(&l));
        assert!(sel("env=").matches(&labels(&[("env", "")])));
    }

    #[test]
    fn numeric_comparisons() {
        let l = labels(&[("n", "5")]);
        assert!(sel("n>3").matches(&l));
        assert!(!sel("n<3").matches(&l));
        assert!(LabelSelector::parse("n>x").is_err());
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "app=we b",
            "in (a)",
            "app in a",
            "app in (a",
            "a==b==c",
            "!a=b",
            "-a=b",
            "app=-x",
        ] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert!(
                err.starts_with("unable to parse requirement"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"},
                         "spec": {"nodeName": "n1", "hostNetwork": false},
                         "status": {"phase": "Running"}});
        let f = |s: &str| {
            FieldSelector::parse(s, &["spec.nodeName", "status.phase", "spec.hostNetwork"])
        };
        assert!(f("metadata.name=a").expect("parses").matches(&obj));
        assert!(
            f("metadata.name==a,metadata.namespace=ns")
                .expect("parses")
                .matches(&obj)
        );
        assert!(!f("metadata.name!=a").expect("parses").matches(&obj));
        assert!(
            f("spec.nodeName=n1,status.phase!=Pending")
                .expect("parses")
                .matches(&obj)
        );
        assert!(f("spec.hostNetwork=false").expect("parses").matches(&obj));
        assert_eq!(
            f("metadata.name=a").expect("parses").exact_name(),
            Some("a")
        );
        assert_eq!(
            f("spec.bogus=x").expect_err("unknown field"),
            "field label not supported: spec.bogus"
        );
        assert!(f("nonsense").is_err());
        let escaped = FieldSelector::parse(r"metadata.name=a\,b", &[]).expect("parses");
        assert_eq!(escaped.terms[0].value, "a,b");
    }
}

/// Property tests: the parser against an independent reading of selector objects, and
/// against arbitrary input.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::{Just, Strategy};
    use serde_json::{Value, json};

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("app".to_string()),
            Just("tier".to_string()),
            Just("example.com/team".to_string()),
            Just("k8s.io_v-1".to_string()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("web".to_string()),
            Just("db".to_string()),
            Just("v1.2_x-y".to_string()),
        ]
    }

    fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(key(), value(), 0..4)
    }

    /// A `metav1.LabelSelector` object.
    fn selector_object() -> impl Strategy<Value = Value> {
        let expression = (
            key(),
            prop_oneof![
                Just("In"),
                Just("NotIn"),
                Just("Exists"),
                Just("DoesNotExist")
            ],
            prop::collection::vec(value().prop_filter("non-empty", |v| !v.is_empty()), 1..3),
        )
            .prop_map(|(key, op, values)| match op {
                "In" | "NotIn" => json!({"key": key, "operator": op, "values": values}),
                _ => json!({"key": key, "operator": op}),
            });
        (
            prop::collection::btree_map(key(), value(), 0..3),
            prop::collection::vec(expression, 0..3),
        )
            .prop_map(|(match_labels, exprs)| {
                json!({"matchLabels": match_labels, "matchExpressions": exprs})
            })
    }

    /// What the selector object means, read directly (upstream's `LabelSelectorAsSelector`).
    fn oracle(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
        let by_labels = sel["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
        let by_exprs = sel["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let key = e["key"].as_str().unwrap_or_default();
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let have = labels.get(key).map(String::as_str);
                match e["operator"].as_str().unwrap_or_default() {
                    "In" => have.is_some_and(|v| values.contains(&v)),
                    "NotIn" => have.is_none_or(|v| !values.contains(&v)),
                    "Exists" => have.is_some(),
                    _ => have.is_none(),
                }
            });
        by_labels && by_exprs
    }

    /// One requirement written in one of the equivalent spellings the grammar allows.
    fn spelled(r: &Requirement, style: u8) -> String {
        let sp = if style & 1 == 1 { " " } else { "" };
        match &r.op {
            LabelOp::In(v) if v.len() == 1 && style & 2 == 2 => {
                let eq = if style & 4 == 4 { "==" } else { "=" };
                format!("{}{sp}{eq}{sp}{}", r.key, v[0])
            }
            LabelOp::NotIn(v) if v.len() == 1 && style & 2 == 2 => {
                format!("{}{sp}!={sp}{}", r.key, v[0])
            }
            LabelOp::In(v) => format!("{} in{sp}({})", r.key, v.join(&format!(",{sp}"))),
            LabelOp::NotIn(v) => format!("{} notin ({sp}{}{sp})", r.key, v.join(",")),
            LabelOp::Exists => r.key.clone(),
            LabelOp::DoesNotExist => format!("!{sp}{}", r.key),
            LabelOp::Gt(n) => format!("{}{sp}>{sp}{n}", r.key),
            LabelOp::Lt(n) => format!("{}{sp}<{sp}{n}", r.key),
        }
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let op = prop_oneof![
            prop::collection::vec(value(), 1..3).prop_map(LabelOp::In),
            prop::collection::vec(value(), 1..3).prop_map(LabelOp::NotIn),
            Just(LabelOp::Exists),
            Just(LabelOp::DoesNotExist),
            (0i64..100).prop_map(LabelOp::Gt),
            (0i64..100).prop_map(LabelOp::Lt),
        ];
        (key(), op).prop_map(|(key, op)| Requirement { key, op })
    }

    proptest! {
        #[test]
        fn selector_objects_select_what_they_say(
            sel in selector_object(),
            labels in labels(),
        ) {
            let text = selector_text(Some(&sel));
            let parsed = LabelSelector::parse(&text);
            prop_assert!(parsed.is_ok(), "{text:?}: {parsed:?}");
            let parsed = parsed.unwrap_or_default();
            prop_assert_eq!(parsed.matches(&labels), oracle(&sel, &labels), "{}", text);
        }

        #[test]
        fn every_spelling_parses_to_the_same_requirements(
            reqs in prop::collection::vec(requirement(), 1..4),
            styles in prop::collection::vec(any::<u8>(), 4),
            comma_space in any::<bool>(),
        ) {
            let sep = if comma_space { ", " } else { "," };
            let text = reqs
                .iter()
                .zip(styles.iter().cycle())
                .map(|(r, s)| spelled(r, *s))
                .collect::<Vec<_>>()
                .join(sep);
            prop_assert_eq!(LabelSelector::parse(&text), Ok(LabelSelector { requirements: reqs }), "{}", text);
        }

        #[test]
        fn not_equal_is_the_negation_of_equal(k in key(), v in value(), labels in labels()) {
            let eq = LabelSelector::parse(&format!("{k}={v}")).unwrap_or_default();
            let ne = LabelSelector::parse(&format!("{k}!={v}")).unwrap_or_default();
            prop_assert_eq!(eq.matches(&labels), !ne.matches(&labels));
        }

        #[test]
        fn any_input_is_an_answer_not_a_panic(s in "[ a-z0-9=!<>(),./_-]{0,24}", t in "\\PC{0,16}") {
            let _ = LabelSelector::parse(&s);
            let _ = LabelSelector::parse(&t);
            let _ = FieldSelector::parse(&s, &["spec.nodeName"]);
            let _ = FieldSelector::parse(&t, &["spec.nodeName"]);
        }
    }
}
