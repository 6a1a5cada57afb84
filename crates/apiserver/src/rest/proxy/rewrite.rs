//! Upstream's proxy transport (`k8s.io/apimachinery/pkg/util/proxy/transport.go`) on the
//! answers of `pods/proxy`, `services/proxy` and `nodes/proxy`: a `Location` on the backend
//! goes back under the proxy path; otherwise a `text/html` body (plain, `gzip` or `deflate`;
//! another encoding is passed on untouched, as upstream) has the URL-valued attributes of
//! upstream's `atomsToAttrs` table rewritten the same way, and is sent encoded as it came,
//! without its old `Content-Length`. Other answers are passed on as they stream.
//!
//! A URL is rewritten when it is an absolute path, or names the backend (`host:port` dialled)
//! or the client's own `Host`: it becomes the proxy path joined with its path (Go's
//! `path.Join`, a trailing slash kept), without scheme and host unless the host was the
//! client's; one already under the proxy path keeps its path. Relative URLs, URLs of other
//! hosts and URLs that do not parse are left as they are.
//!
//! The body is read whole before it is rewritten, as upstream's `rewriteResponse` does; the
//! HTML itself goes through `lol_html`, a streaming rewriter that keeps everything but the
//! attributes it changes byte for byte (upstream's tokenizer re-serializes the tags it
//! touches; attribute values are kept with their entities here, decoded and re-escaped
//! there: the same URL either way).

use std::io::{Read as _, Write as _};

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use lol_html::{HtmlRewriter, Settings, element};

use crate::status::ApiError;

/// The attributes of each element that hold a URL (upstream's `atomsToAttrs`).
const URL_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("a", &["href"]),
    ("applet", &["codebase"]),
    ("area", &["href"]),
    ("audio", &["src"]),
    ("base", &["href"]),
    ("blockquote", &["cite"]),
    ("body", &["background"]),
    ("button", &["formaction"]),
    ("command", &["icon"]),
    ("del", &["cite"]),
    ("embed", &["src"]),
    ("form", &["action"]),
    ("frame", &["longdesc", "src"]),
    ("head", &["profile"]),
    ("html", &["manifest"]),
    ("iframe", &["longdesc", "src"]),
    ("img", &["longdesc", "src", "usemap"]),
    ("input", &["src", "usemap", "formaction"]),
    ("ins", &["cite"]),
    ("link", &["href"]),
    ("object", &["classid", "codebase", "data", "usemap"]),
    ("q", &["cite"]),
    ("script", &["src"]),
    ("source", &["src"]),
    ("video", &["poster", "src"]),
];

/// How the URLs of one proxied answer are rewritten (upstream's `Transport` as the apiserver
/// builds it: no scheme or host of its own).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UrlRewriter<'a> {
    /// The backend's `host:port`, as dialled.
    pub(crate) backend: &'a str,
    /// The client's `Host` header (`""` without one).
    pub(crate) request_host: &'a str,
    /// The request path up to the part the backend is asked for (upstream's `PathPrepend`).
    pub(crate) prefix: &'a str,
}

/// The parts of a URL upstream's `rewriteURL` looks at.
struct Url<'a> {
    /// `scheme:` included, `""` without one.
    scheme: &'a str,
    host: &'a str,
    path: &'a str,
    /// `?query` and `#fragment`, as written.
    rest: &'a str,
}

/// Splits a URL as Go's `url.Parse` does, far enough for the rewrite; `None` for what it
/// refuses (control characters, a bad `%` escape, a colon in a relative first segment).
fn parse(raw: &str) -> Option<Url<'_>> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) || !escapes_ok(raw) {
        return None;
    }
    let scheme_end = raw.find(':').filter(|&i| {
        let s = &raw[..i];
        s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    let (scheme, after) = match scheme_end {
        Some(i) => raw.split_at(i + 1),
        None => ("", raw),
    };
    let end = after.find(['?', '#']).unwrap_or(after.len());
    let (hier, rest) = after.split_at(end);
    if scheme.is_empty() && !hier.starts_with('/') && hier.split('/').next()?.contains(':') {
        return None;
    }
    let (host, path) = match hier.strip_prefix("//") {
        Some(authority) => {
            let at = authority.find('/').unwrap_or(authority.len());
            let (userinfo_host, path) = authority.split_at(at);
            let host = userinfo_host.rsplit('@').next().unwrap_or_default();
            (host, path)
        }
        None => ("", hier),
    };
    Some(Url {
        scheme,
        host,
        path,
        rest,
    })
}

/// Every `%` starts a two-digit hex escape.
fn escapes_ok(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Go's `path.Join(prefix, path)` for an absolute `prefix`.
fn join(prefix: &str, path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in prefix.split('/').chain(path.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

impl UrlRewriter<'_> {
    /// Upstream's `rewriteURL`: the URL to write instead, `None` to leave it.
    pub(crate) fn rewrite(&self, raw: &str) -> Option<String> {
        let url = parse(raw)?;
        let other_host =
            !url.host.is_empty() && url.host != self.backend && url.host != self.request_host;
        if other_host || !url.path.starts_with('/') {
            return None;
        }
        // The client's own host stays (the transport has no scheme or host to put instead).
        let origin = if !url.host.is_empty() && url.host == self.request_host {
            format!("{}//{}", url.scheme, url.host)
        } else {
            String::new()
        };
        let path = if url.path.starts_with(self.prefix) {
            url.path.to_string()
        } else {
            let mut p = join(self.prefix, url.path);
            if url.path.ends_with('/') && !p.ends_with('/') {
                p.push('/');
            }
            p
        };
        let out = format!("{origin}{path}{}", url.rest);
        (out != raw).then_some(out)
    }

    /// Upstream's `rewriteHTML`: the URL-valued attributes of [`URL_ATTRIBUTES`] rewritten,
    /// the rest of the document unchanged.
    fn rewrite_html(&self, html: &[u8]) -> Result<Vec<u8>, lol_html::errors::RewritingError> {
        let mut out = Vec::with_capacity(html.len() + html.len() / 8);
        let mut rewriter = HtmlRewriter::new(
            Settings {
                element_content_handlers: vec![element!("*", |el| {
                    let tag = el.tag_name();
                    let Some((_, attributes)) = URL_ATTRIBUTES.iter().find(|(t, _)| *t == tag)
                    else {
                        return Ok(());
                    };
                    for name in *attributes {
                        let new = el.get_attribute(name).and_then(|v| self.rewrite(&v));
                        if let Some(new) = new {
                            el.set_attribute(name, &new)?;
                        }
                    }
                    Ok(())
                })],
                ..Settings::new()
            },
            |chunk: &[u8]| out.extend_from_slice(chunk),
        );
        rewriter.write(html)?;
        rewriter.end()?;
        Ok(out)
    }
}

/// The body a rewrite failed on is answered with upstream's 500 (the transport's error).
fn failed(what: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("Failed to rewrite URLs: {what}"))
}

/// `body` decoded from its `Content-Encoding`.
fn decode(encoding: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(|e| ApiError::internal(format!("errorf making gzip reader: {e}")))?,
        "deflate" => flate2::read::DeflateDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(failed)?,
        _ => return Ok(body.to_vec()),
    };
    Ok(out)
}

/// `body` encoded again as it came (deflate at the best compression, as upstream).
fn encode(encoding: &str, body: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&body).map_err(failed)?;
            e.finish().map_err(failed)
        }
        "deflate" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&body).map_err(failed)?;
            e.finish().map_err(failed)
        }
        _ => Ok(body),
    }
}

/// Upstream's `Transport.RoundTrip` after the backend answered: see the module doc.
pub(crate) async fn rewrite_response(
    response: Response,
    urls: UrlRewriter<'_>,
) -> Result<Response, ApiError> {
    let (mut parts, body) = response.into_parts();
    if let Some(location) = parts.headers.get(header::LOCATION) {
        let new = location
            .to_str()
            .ok()
            .and_then(|l| urls.rewrite(l))
            .and_then(|l| HeaderValue::from_str(&l).ok());
        if let Some(l) = new {
            parts.headers.insert(header::LOCATION, l);
        }
        return Ok(Response::from_parts(parts, body));
    }
    let header_str = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let media_type = header_str(header::CONTENT_TYPE);
    if media_type.split(';').next().unwrap_or_default().trim() != "text/html" {
        return Ok(Response::from_parts(parts, body));
    }
    let encoding = header_str(header::CONTENT_ENCODING);
    if !matches!(encoding.as_str(), "" | "gzip" | "deflate") {
        tracing::debug!(
            encoding,
            "text/html in an encoding not understood: links not rewritten"
        );
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::internal(format!("error reading from the backend: {e}")))?;
    if bytes.is_empty() {
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let html = decode(&encoding, &bytes)?;
    let rewritten = urls.rewrite_html(&html).map_err(failed)?;
    let out = encode(&encoding, rewritten)?;
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from(out)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PREFIX: &str = "/api/v1/namespaces/d/pods/web/proxy";

    fn urls() -> UrlRewriter<'static> {
        UrlRewriter {
            backend: "10.0.0.1:80",
            request_host: "127.0.0.1:6443",
            prefix: PREFIX,
        }
    }

    #[test]
    fn urls_on_the_backend_go_under_the_proxy_path() {
        let r = urls();
        let cases = [
            ("/login?x=1", Some(format!("{PREFIX}/login?x=1"))),
            ("http://10.0.0.1:80/a/", Some(format!("{PREFIX}/a/"))),
            ("//10.0.0.1:80/a", Some(format!("{PREFIX}/a"))),
            ("/a/../b#top", Some(format!("{PREFIX}/b#top"))),
            ("/", Some(format!("{PREFIX}/"))),
            (
                "https://127.0.0.1:6443/x",
                Some(format!("https://127.0.0.1:6443{PREFIX}/x")),
            ),
            (&format!("{PREFIX}/already"), None),
            (
                &format!("http://10.0.0.1:80{PREFIX}/a"),
                Some(format!("{PREFIX}/a")),
            ),
            ("https://example.com/a", None),
            ("http://10.0.0.1/a", None),
            ("next", None),
            ("../up", None),
            ("mailto:someone@example.com", None),
            ("#frag", None),
            ("/bad%zzescape", None),
            ("a:b/c", None),
        ];
        for (raw, want) in cases {
            assert_eq!(r.rewrite(raw), want, "{raw}");
        }
    }

    /// (A changed attribute is written double-quoted, whatever its quotes were.)
    #[test]
    fn only_the_url_attributes_of_the_table_change() {
        let html = br#"<!DOCTYPE html><html manifest="/m"><head><link rel="stylesheet" href="/s.css"></head>
<body background="/bg.png"><a href="/x?a=1&amp;b=2" title="/not-a-url">x</a> <a href=rel>r</a>
<img src='http://10.0.0.1:80/i.png' alt="/alt"><div data-src="/no">/text</div>
<form action="/post"><input formaction="/f" value="/v"></form>
<script src="/app.js">var u = "/in-script";</script><A HREF="/upper">u</A></body></html>"#;
        let out = String::from_utf8(urls().rewrite_html(html).unwrap()).unwrap();
        let p = PREFIX;
        let want = format!(
            r#"<!DOCTYPE html><html manifest="{p}/m"><head><link rel="stylesheet" href="{p}/s.css"></head>
<body background="{p}/bg.png"><a href="{p}/x?a=1&amp;b=2" title="/not-a-url">x</a> <a href=rel>r</a>
<img src="{p}/i.png" alt="/alt"><div data-src="/no">/text</div>
<form action="{p}/post"><input formaction="{p}/f" value="/v"></form>
<script src="{p}/app.js">var u = "/in-script";</script><A HREF="{p}/upper">u</A></body></html>"#
        );
        assert_eq!(out, want);
    }

    #[test]
    fn encoded_bodies_round_trip() {
        let body = b"<a href=\"/x\">x</a>".to_vec();
        for encoding in ["gzip", "deflate", ""] {
            let encoded = encode(encoding, body.clone()).unwrap();
            assert_eq!(decode(encoding, &encoded).unwrap(), body, "{encoding}");
        }
    }
}
