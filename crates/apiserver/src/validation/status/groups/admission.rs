//! admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy status updates:
//! `ValidateValidatingAdmissionPolicyStatusUpdate` — `typeChecking.expressionWarnings` (a
//! `warning` and a `fieldRef` client-go's JSONPath parser accepts) and metav1 `conditions`.

use serde_json::Value;

use super::{NULL, status};
use crate::status::Cause;
use crate::validation::meta::metav1_conditions;
use crate::validation::{invalid, items, q, required, str_of};

/// `validateValidatingAdmissionPolicyStatus`.
pub(super) fn policy(obj: &Value) -> Vec<Cause> {
    let s = status(obj);
    let mut causes = Vec::new();
    let checking = s.get("typeChecking").unwrap_or(&NULL);
    for (i, w) in items(checking, "expressionWarnings").iter().enumerate() {
        let at = format!("status.typeChecking.expressionWarnings[{i}]");
        if str_of(w, "warning").is_empty() {
            causes.push(required(format!("{at}.warning"), ""));
        }
        let field_ref = str_of(w, "fieldRef").trim();
        if field_ref.is_empty() {
            causes.push(required(format!("{at}.fieldRef"), ""));
        } else if let Err(e) = jsonpath::check(&format!("{{{field_ref}}}")) {
            causes.push(invalid(
                format!("{at}.fieldRef"),
                &q(field_ref),
                &format!("invalid JSONPath: {e}"),
            ));
        }
    }
    causes.extend(metav1_conditions(
        items(s, "conditions"),
        "status.conditions",
    ));
    causes
}

/// The syntax client-go's `util/jsonpath` parser accepts (`Parser.Parse`), for its errors: the
/// template's text and `{...}` actions (fields, `[...]` indexes, slices, unions and `?()`
/// filters, quoted strings, numbers, identifiers, `..`).
mod jsonpath {
    use crate::validation::go_unicode;

    /// A parse position in the template.
    struct Parser<'a> {
        input: &'a str,
        pos: usize,
        start: usize,
    }

    /// Parses `text` as a whole template.
    pub(super) fn check(text: &str) -> Result<(), String> {
        Parser {
            input: text,
            pos: 0,
            start: 0,
        }
        .text()
    }

    /// `parseAction`: `text` inside one action.
    fn action(text: &str) -> Result<(), String> {
        check(&format!("{{{text}}}"))
    }

    fn is_terminator(c: Option<char>) -> bool {
        match c {
            None => true,
            Some(c) => matches!(
                c,
                ' ' | '\t' | '\r' | '\n' | '.' | ',' | '[' | ']' | '$' | '@' | '{' | '}'
            ),
        }
    }

    fn is_alphanumeric(c: char) -> bool {
        c == '_' || c.is_alphabetic() || c.is_numeric()
    }

    impl Parser<'_> {
        fn rest(&self) -> &str {
            &self.input[self.pos..]
        }

        fn next(&mut self) -> Option<char> {
            let c = self.rest().chars().next()?;
            self.pos += c.len_utf8();
            Some(c)
        }

        fn peek(&self) -> Option<char> {
            self.rest().chars().next()
        }

        fn back(&mut self, c: Option<char>) {
            if let Some(c) = c {
                self.pos -= c.len_utf8();
            }
        }

        fn consume(&mut self) -> &str {
            let text = &self.input[self.start..self.pos];
            self.start = self.pos;
            text
        }

        fn text(&mut self) -> Result<(), String> {
            loop {
                if self.rest().starts_with('{') {
                    self.pos += 1;
                    self.consume();
                    return self.inside();
                }
                if self.next().is_none() {
                    return Ok(());
                }
            }
        }

        fn inside(&mut self) -> Result<(), String> {
            loop {
                if self.rest().starts_with('}') {
                    self.pos += 1;
                    self.consume();
                    return self.text();
                }
                if self.rest().starts_with("[?(") {
                    return self.filter();
                }
                if self.rest().starts_with("..") {
                    self.pos += 2;
                    self.consume();
                    if self.peek().is_some_and(is_alphanumeric) {
                        return self.field();
                    }
                    continue;
                }
                match self.next() {
                    None | Some('\r' | '\n') => return Err("unclosed action".into()),
                    Some(' ' | '@' | '$') => {
                        self.consume();
                    }
                    Some('[') => return self.array(),
                    Some(c @ ('"' | '\'')) => return self.quote(c),
                    Some('.') => return self.field(),
                    Some(c) if c == '+' || c == '-' || c.is_ascii_digit() => {
                        self.back(Some(c));
                        return self.number();
                    }
                    Some(c) if is_alphanumeric(c) => {
                        self.back(Some(c));
                        return self.identifier();
                    }
                    Some(c) => {
                        return Err(format!(
                            "unrecognized character in action: {}",
                            go_unicode(c)
                        ));
                    }
                }
            }
        }

        fn identifier(&mut self) -> Result<(), String> {
            loop {
                let c = self.next();
                if is_terminator(c) {
                    self.back(c);
                    break;
                }
            }
            self.consume();
            self.inside()
        }

        fn number(&mut self) -> Result<(), String> {
            if matches!(self.peek(), Some('+' | '-')) {
                self.next();
            }
            loop {
                let c = self.next();
                if !matches!(c, Some(c) if c == '.' || c.is_ascii_digit()) {
                    self.back(c);
                    break;
                }
            }
            let value = self.consume().to_string();
            let digits = value.strip_prefix(['+', '-']).unwrap_or(&value);
            // `strconv.Atoi`, else `strconv.ParseFloat`: digits with at most one dot.
            let float = match digits.matches('.').count() {
                0 => !digits.is_empty(),
                1 => digits.len() > 1,
                _ => false,
            };
            if !float {
                return Err(format!("cannot parse number {value}"));
            }
            self.inside()
        }

        fn array(&mut self) -> Result<(), String> {
            loop {
                match self.next() {
                    None | Some('\n') => return Err("unterminated array".into()),
                    Some(']') => break,
                    Some(_) => {}
                }
            }
            let consumed = self.consume();
            let mut text = consumed[1..consumed.len() - 1].to_string();
            if text == "*" {
                text = ":".into();
            }
            let parts: Vec<&str> = text.split(',').collect();
            if parts.len() > 1 {
                for part in parts {
                    action(&format!("[{}]", part.trim_matches(' ')))?;
                }
                return self.inside();
            }
            if let Some(key) = text
                .strip_prefix('\'')
                .and_then(|t| t.strip_suffix('\''))
                .filter(|k| !k.contains('\''))
            {
                action(&format!(".{key}"))?;
                return self.inside();
            }
            slice(&text)?;
            self.inside()
        }

        fn filter(&mut self) -> Result<(), String> {
            self.pos += 3;
            self.consume();
            let (mut begin, mut end) = (false, false);
            let mut pair = ' ';
            loop {
                match self.next() {
                    None | Some('\n') => return Err("unterminated filter".into()),
                    Some(c @ ('"' | '\'')) => {
                        if !begin {
                            begin = true;
                            pair = c;
                        } else if self.input.as_bytes()[self.pos - 2] != b'\\' && c == pair {
                            end = true;
                        }
                    }
                    Some(')') if begin == end => break,
                    Some(_) => {}
                }
            }
            if self.next() != Some(']') {
                return Err("unclosed array expect ]".into());
            }
            let consumed = self.consume();
            let text = consumed[..consumed.len() - 2].to_string();
            match comparison(&text) {
                None => action(&text)?,
                Some((left, right)) => {
                    action(left)?;
                    action(right)?;
                }
            }
            self.inside()
        }

        fn quote(&mut self, end: char) -> Result<(), String> {
            loop {
                match self.next() {
                    None | Some('\n') => return Err("unterminated quoted string".into()),
                    Some(c) if c == end && self.input.as_bytes()[self.pos - 2] != b'\\' => break,
                    Some(_) => {}
                }
            }
            let value = self.consume().to_string();
            if unquote(&value).is_none() {
                return Err(format!("unquote string {value} error invalid syntax"));
            }
            self.inside()
        }

        fn field(&mut self) -> Result<(), String> {
            self.consume();
            loop {
                let c = self.next();
                if c == Some('\\') {
                    self.next();
                } else if is_terminator(c) {
                    self.back(c);
                    break;
                }
            }
            self.consume();
            self.inside()
        }
    }

    /// The slice operator `[start:end:step]` (each an optional integer).
    fn slice(text: &str) -> Result<(), String> {
        let parts: Vec<&str> = text.split(':').collect();
        let int_like = |s: &str| {
            let d = s.strip_prefix('-').unwrap_or(s);
            d.bytes().all(|b| b.is_ascii_digit())
        };
        if parts.len() > 3 || !parts.iter().all(|p| int_like(p)) {
            return Err(format!("invalid array index {text}"));
        }
        for p in parts.iter().filter(|p| !p.is_empty()) {
            if p.parse::<i64>().is_err() {
                return Err(format!("array index {p} is not a number"));
            }
        }
        Ok(())
    }

    /// The filter's `left <op> right` split (`^([^!<>=]+)([!<>=]+)(.+?)$`).
    fn comparison(text: &str) -> Option<(&str, &str)> {
        let op = text.find(['!', '<', '>', '='])?;
        if op == 0 {
            return None;
        }
        let after = &text[op..];
        let len = after
            .find(|c: char| !matches!(c, '!' | '<' | '>' | '='))
            .unwrap_or(after.len());
        let right = &after[len..];
        if right.is_empty() || right.contains('\n') || text[..op].contains('\n') {
            return None;
        }
        Some((&text[..op], right))
    }

    /// `UnquoteExtend`: a single- or double-quoted string with Go's escapes.
    fn unquote(s: &str) -> Option<String> {
        let quote = s.chars().next()?;
        if s.len() < 2 || !s.ends_with(quote) || !matches!(quote, '"' | '\'') {
            return None;
        }
        let mut chars = s[1..s.len() - 1].chars();
        let mut out = String::new();
        while let Some(c) = chars.next() {
            if c == quote {
                return None;
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<u32> {
                let digits: String = chars.by_ref().take(n).collect();
                (digits.len() == n)
                    .then(|| u32::from_str_radix(&digits, 16).ok())
                    .flatten()
            };
            match chars.next()? {
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\u{b}'),
                '\\' => out.push('\\'),
                e @ ('\'' | '"') if e == quote => out.push(e),
                'x' => out.push(char::from_u32(hex(&mut chars, 2)?)?),
                'u' => out.push(char::from_u32(hex(&mut chars, 4)?)?),
                'U' => out.push(char::from_u32(hex(&mut chars, 8)?)?),
                d @ '0'..='7' => {
                    let rest: String = chars.by_ref().take(2).collect();
                    let v = u32::from_str_radix(&format!("{d}{rest}"), 8).ok()?;
                    if rest.len() != 2 || v > 255 {
                        return None;
                    }
                    out.push(char::from_u32(v)?);
                }
                _ => return None,
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::check;

        fn field_ref(s: &str) -> Result<(), String> {
            check(&format!("{{{s}}}"))
        }

        #[test]
        fn accepted_paths() {
            for ok in [
                ".spec.replicas",
                "spec.template.spec.containers[0].image",
                ".items[*].metadata.name",
                ".spec.containers[?(@.name==\"main\")].image",
                ".metadata.labels['app']",
                ".spec.list[1:3]",
                "..name",
                ".a[0,1]",
            ] {
                assert_eq!(field_ref(ok), Ok(()), "{ok}");
            }
        }

        #[test]
        fn refused_paths() {
            assert_eq!(field_ref(".spec[0"), Err("unterminated array".into()));
            // A field runs to the next terminator: `.spec!` is the field `spec!`.
            assert_eq!(field_ref(".spec!"), Ok(()));
            assert_eq!(
                field_ref("!spec"),
                Err("unrecognized character in action: U+0021 '!'".into())
            );
            assert_eq!(field_ref(".spec[a]"), Err("invalid array index a".into()));
            assert_eq!(field_ref("\"abc"), Err("unterminated quoted string".into()));
            assert_eq!(
                field_ref(".a[?(@.b==\"x\""),
                Err("unterminated filter".into())
            );
            assert_eq!(field_ref("1.2.3"), Err("cannot parse number 1.2.3".into()));
            assert_eq!(
                field_ref("{"),
                Err("unrecognized character in action: U+007B '{'".into())
            );
            assert_eq!(field_ref("a\nb"), Err("unclosed action".into()));
            assert_eq!(
                field_ref("[-]"),
                Err("array index - is not a number".into())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, info};
    use serde_json::json;

    #[test]
    fn type_checking_and_conditions() {
        let vap = info(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicies",
        );
        let old = json!({"spec": {}});
        assert!(
            check(
                vap,
                &old,
                json!({"observedGeneration": 1,
                       "typeChecking": {"expressionWarnings": [
                           {"fieldRef": "spec.validations[0].expression", "warning": "w"}]},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Checked",
                                       "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
            )
            .is_empty()
        );
        assert_eq!(
            check(
                vap,
                &old,
                json!({"typeChecking": {"expressionWarnings": [
                           {"fieldRef": " ", "warning": ""},
                           {"fieldRef": "spec.validations[0", "warning": "w"}]},
                       "conditions": [
                           {"type": "bad type!", "status": "True", "reason": "1st",
                            "observedGeneration": -1,
                            "lastTransitionTime": "2026-01-01T00:00:00Z"},
                           {"type": "bad type!", "status": "True", "reason": "Ok",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
            ),
            [
                "status.typeChecking.expressionWarnings[0].warning: Required value",
                "status.typeChecking.expressionWarnings[0].fieldRef: Required value",
                "status.typeChecking.expressionWarnings[1].fieldRef: Invalid value: \
                 \"spec.validations[0\": invalid JSONPath: unterminated array",
                "status.conditions[0].type: Invalid value: \"bad type!\": name part must consist \
                 of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                 alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used \
                 for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                "status.conditions[0].observedGeneration: Invalid value: -1: must be greater than \
                 or equal to zero",
                "status.conditions[0].reason: Invalid value: \"1st\": a condition reason must \
                 start with alphabetic character, optionally followed by a string of \
                 alphanumeric characters or '_,:', and must end with an alphanumeric character \
                 or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName',  or 'ReasonA,ReasonB',  \
                 or 'ReasonA:ReasonB', regex used for validation is \
                 '[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?')",
                "status.conditions[1].type: Duplicate value: \"bad type!\"",
                "status.conditions[1].type: Invalid value: \"bad type!\": name part must consist \
                 of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                 alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used \
                 for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ]
        );
    }
}
