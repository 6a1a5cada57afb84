//! Kubernetes' CEL `url` library: `url()`, `isURL()` and `getScheme`, `getHost`,
//! `getHostname`, `getPort`, `getEscapedPath`, `getQuery`, on URLs parsed as Go's `net/url`
//! does (`ParseRequestURI` to accept, `Parse` for the parts), with Go's error words
//! (`parse "foo": invalid URI for request`). Not reproduced: Go's IPv6 zone (`%25`) checks in
//! hosts and the userinfo's escaping details (only its characters are checked).

use std::collections::HashMap;

use cel::common::types::{CelBool, CelString, Type};
use cel::common::value::{StaticVal, Val};
use cel::objects::{Key, Map as CelMap};
use cel::{DeclarationError, Env, ExecutionError, Value as Cel};

use super::library::fail;
use crate::validation::q;

/// A `kubernetes.URL`: the parts Go's `url.URL` keeps that the library reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Url {
    scheme: String,
    opaque: String,
    host: String,
    path: String,
    raw_path: String,
    raw_query: String,
    fragment: String,
}

static URL_TYPE: Type = Type::new_unspecified_type("kubernetes.URL");

impl Val for Url {
    fn get_type(&self) -> &Type {
        &URL_TYPE
    }
    fn cel_type() -> &'static Type {
        &URL_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Url>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
impl StaticVal for Url {}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Path,
    Host,
    QueryComponent,
    UserPassword,
}

fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if mode == Mode::Host
        && matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => c == b'?',
            Mode::UserPassword => matches!(c, b'@' | b'/' | b'?' | b':'),
            Mode::QueryComponent | Mode::Host => true,
        },
        _ => true,
    }
}

fn unhex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Go's `unescape`: `%XX` decoded (a bad one is `invalid URL escape "%zz"`), `+` a space in
/// query components, host characters checked.
fn unescape(s: &str, mode: Mode) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (hi, lo) = match (
                    b.get(i + 1).and_then(|&c| unhex(c)),
                    b.get(i + 2).and_then(|&c| unhex(c)),
                ) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => {
                        let bad: String = s[i..].chars().take(3).collect();
                        return Err(format!("invalid URL escape {}", q(&bad)));
                    }
                };
                if mode == Mode::Host && hi < 8 && &s[i..i + 3] != "%25" {
                    return Err(format!("invalid URL escape {}", q(&s[i..i + 3])));
                }
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if mode == Mode::QueryComponent => {
                out.push(b' ');
                i += 1;
            }
            c => {
                if mode == Mode::Host && c < 0x80 && should_escape(c, mode) {
                    return Err(format!(
                        "invalid character {} in host name",
                        q(&(c as char).to_string())
                    ));
                }
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn escape(s: &str, mode: Mode) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if should_escape(c, mode) {
            if c == b' ' && mode == Mode::QueryComponent {
                out.push('+');
            } else {
                out.push_str(&format!("%{c:02X}"));
            }
        } else {
            out.push(c as char);
        }
    }
    out
}

fn valid_encoded_path(s: &str) -> bool {
    s.bytes().all(|c| {
        matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'['
                | b']'
                | b'%'
        ) || !should_escape(c, Mode::Path)
    })
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        _ if port.is_empty() => true,
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(end) = host.rfind(']') else {
            return Err("missing ']' in host".into());
        };
        let port = &host[end + 1..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", q(port)));
        }
    } else if let Some(i) = host.rfind(':') {
        let port = &host[i..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {} after host", q(port)));
        }
    }
    unescape(host, Mode::Host)
}

fn parse_authority(authority: &str) -> Result<String, String> {
    let Some(at) = authority.rfind('@') else {
        return parse_host(authority);
    };
    let host = parse_host(&authority[at + 1..])?;
    let userinfo = &authority[..at];
    let valid = userinfo.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b':'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b'@'
            )
    });
    if !valid {
        return Err("net/url: invalid userinfo".into());
    }
    unescape(userinfo, Mode::UserPassword)?;
    Ok(host)
}

/// Go's `url.parse(rawURL, viaRequest)`, the error without Go's `parse "<url>": ` frame.
fn parse(raw: &str, via_request: bool) -> Result<Url, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".into());
    }
    let mut url = Url::default();
    if raw == "*" {
        url.path = "*".into();
        return Ok(url);
    }
    // The scheme: a letter, then letters, digits, `+`, `-`, `.`, up to a colon.
    let mut rest = raw;
    for (i, c) in raw.bytes().enumerate() {
        if c.is_ascii_alphabetic() {
            continue;
        }
        if c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.') {
            if i == 0 {
                break;
            }
            continue;
        }
        if c == b':' {
            if i == 0 {
                return Err("missing protocol scheme".into());
            }
            url.scheme = raw[..i].to_ascii_lowercase();
            rest = &raw[i + 1..];
        }
        break;
    }
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some((r, query)) = rest.split_once('?') {
        url.raw_query = query.to_string();
        rest = r;
    }
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            url.opaque = rest.to_string();
            return Ok(url);
        }
        if via_request {
            return Err("invalid URI for request".into());
        }
        let segment = rest.split('/').next().unwrap_or_default();
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    if (!url.scheme.is_empty() || !via_request && !rest.starts_with("///"))
        && rest.starts_with("//")
    {
        let after = &rest[2..];
        let (authority, path) = after.split_at(after.find('/').unwrap_or(after.len()));
        url.host = parse_authority(authority)?;
        rest = path;
    }
    url.path = unescape(rest, Mode::Path)?;
    if escape(&url.path, Mode::Path) != rest {
        url.raw_path = rest.to_string();
    }
    Ok(url)
}

/// Go's `url.ParseRequestURI`, as `isURL` and `url()` accept a URL.
fn parse_request_uri(raw: &str) -> Result<Url, String> {
    parse(raw, true).map_err(|e| format!("parse {}: {e}", q(raw)))
}

/// Go's `url.Parse` (the fragment split off first).
fn parse_url(raw: &str) -> Result<Url, String> {
    let (u, fragment) = raw.split_once('#').unwrap_or((raw, ""));
    let mut url = parse(u, false).map_err(|e| format!("parse {}: {e}", q(u)))?;
    url.fragment = unescape(fragment, Mode::Path).unwrap_or_default();
    Ok(url)
}

impl Url {
    fn split_host_port(&self) -> (&str, &str) {
        let mut host = self.host.as_str();
        let mut port = "";
        if let Some(colon) = host.rfind(':')
            && valid_optional_port(&host[colon..])
        {
            port = &host[colon + 1..];
            host = &host[..colon];
        }
        if host.starts_with('[') && host.ends_with(']') && host.len() >= 2 {
            host = &host[1..host.len() - 1];
        }
        (host, port)
    }

    fn escaped_path(&self) -> String {
        if !self.raw_path.is_empty()
            && valid_encoded_path(&self.raw_path)
            && unescape(&self.raw_path, Mode::Path).is_ok_and(|p| p == self.path)
        {
            return self.raw_path.clone();
        }
        if self.path == "*" {
            return "*".into();
        }
        escape(&self.path, Mode::Path)
    }

    /// Go's `url.ParseQuery`, with the pairs it cannot read skipped as `Query()` does.
    fn query(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for pair in self.raw_query.split('&') {
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Ok(k), Ok(v)) = (
                unescape(k, Mode::QueryComponent),
                unescape(v, Mode::QueryComponent),
            ) else {
                continue;
            };
            match out.iter_mut().find(|(key, _)| *key == k) {
                Some((_, values)) => values.push(v),
                None => out.push((k, vec![v])),
            }
        }
        out
    }
}

pub(super) fn register(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn to_url: (CelString) -> Result<Url>, name = "url")?;
    cel::add_overload!(env, fn is_url: (CelString) -> CelBool, name = "isURL")?;
    cel::add_member_overload!(env, fn get_scheme: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_host: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_hostname: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_port: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_escaped_path: (Url) -> CelString)?;
    env.add_member_overload(
        "getQuery",
        "url_get_query",
        URL_TYPE.to_owned(),
        vec![],
        get_query,
    )?;
    Ok(())
}

fn to_url(s: &CelString<'_>) -> Result<Url, ExecutionError> {
    parse_request_uri(s.inner())
        .and_then(|_| parse_url(s.inner()))
        .map_err(|e| {
            fail(
                "url",
                format!("URL parse error during conversion from string: {e}"),
            )
        })
}

fn is_url(s: &CelString<'_>) -> CelBool {
    parse_request_uri(s.inner()).is_ok().into()
}

fn text(s: &str) -> CelString<'static> {
    CelString::from(s.to_string())
}

fn get_scheme(u: &Url) -> CelString<'static> {
    text(&u.scheme)
}

fn get_host(u: &Url) -> CelString<'static> {
    text(&u.host)
}

fn get_hostname(u: &Url) -> CelString<'static> {
    text(u.split_host_port().0)
}

fn get_port(u: &Url) -> CelString<'static> {
    text(u.split_host_port().1)
}

fn get_escaped_path(u: &Url) -> CelString<'static> {
    text(&u.escaped_path())
}

fn get_query<'b, 'v>(
    args: Vec<cel::common::value::CowVal<'b, 'v>>,
) -> Result<cel::common::value::CowVal<'b, 'v>, ExecutionError> {
    let url = args
        .first()
        .and_then(|a| a.downcast_ref::<Url>())
        .ok_or_else(|| ExecutionError::no_such_overload("getQuery", Vec::new()))?;
    let map: HashMap<Key, Cel> = url
        .query()
        .into_iter()
        .map(|(k, values)| {
            (
                Key::String(k.into()),
                Cel::List(
                    values
                        .into_iter()
                        .map(|v| Cel::String(v.into()))
                        .collect::<Vec<_>>()
                        .into(),
                ),
            )
        })
        .collect();
    let value: Box<dyn Val> = Cel::Map(CelMap { map: map.into() }).try_into()?;
    Ok(cel::common::value::CowVal::Owned(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        let u = parse_url("https://user@example.com:8080/a%2Fb/c d?k1=a&k2=b&k2=c#frag")
            .unwrap_or_default();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.host, "example.com:8080");
        assert_eq!(u.split_host_port(), ("example.com", "8080"));
        // Go keeps the raw path only when it is a valid encoding (not with a space).
        assert_eq!(u.escaped_path(), "/a/b/c%20d");
        let raw = parse_url("https://example.com/a%2Fb/c").unwrap_or_default();
        assert_eq!(
            (raw.path.as_str(), raw.escaped_path().as_str()),
            ("/a/b/c", "/a%2Fb/c")
        );
        assert_eq!(
            u.query(),
            [
                ("k1".to_string(), vec!["a".to_string()]),
                ("k2".to_string(), vec!["b".to_string(), "c".to_string()])
            ]
        );
        let v6 = parse_url("http://[::1]:80/").unwrap_or_default();
        assert_eq!(v6.split_host_port(), ("::1", "80"));
        assert_eq!(
            parse_url("https://example.com")
                .unwrap_or_default()
                .escaped_path(),
            ""
        );
        assert_eq!(
            parse_request_uri("foo"),
            Err("parse \"foo\": invalid URI for request".into())
        );
        assert_eq!(
            parse_request_uri("http://a b.com/"),
            Err("parse \"http://a b.com/\": invalid character \" \" in host name".into())
        );
        assert_eq!(
            parse_request_uri("http://example.com:x/"),
            Err("parse \"http://example.com:x/\": invalid port \":x\" after host".into())
        );
        assert!(parse_request_uri("/just/a/path").is_ok());
        assert_eq!(
            parse_request_uri(":x"),
            Err("parse \":x\": missing protocol scheme".into())
        );
    }
}
