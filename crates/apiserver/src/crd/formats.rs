//! The string `format`s upstream checks in custom resources: the default format registry of
//! kube-openapi's validator (`uri`, `email`, `hostname`, `ipv4`, `ipv6`, `cidr`, `mac`,
//! `uuid`/`uuid3`/`uuid4`/`uuid5`, `isbn`/`isbn10`/`isbn13`, `creditcard`, `ssn`, `hexcolor`,
//! `rgbcolor`, `byte`, `password`, `date`, `date-time`/`datetime`, `duration`). Numeric
//! formats (`int32`, `int64`, `float`, `double`) and unknown formats are not checked, as
//! upstream (its format validator only looks at strings it has a checker for).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

fn re(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

static HOSTNAME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"^([a-zA-Z0-9\p{S}\p{L}]((-?[a-zA-Z0-9\p{S}\p{L}]{0,62})?)|([a-zA-Z0-9\p{S}\p{L}](([a-zA-Z0-9\-\p{S}\p{L}]{0,61}[a-zA-Z0-9\p{S}\p{L}])?)(\.)){1,}([a-zA-Z0-9\p{S}\p{L}])(-?[a-zA-Z0-9\p{S}\p{L}]){1,62})$",
    )
});
static UUID: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$"));
static UUID3: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
});
static UUID4: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
});
static UUID5: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
});
static BASE64: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$")
});
static HEXCOLOR: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"));
static RGBCOLOR: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$",
    )
});
static SSN: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"^\d{3}[- ]?\d{2}[- ]?\d{4}$"));
static DATE_TIME: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(:(\d{2})(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?$")
});
static DURATION: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"^\s*(?:\d+\s*[A-Za-zµ]+\s*)+$"));
static DURATION_PART: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"((\d+)\s*([A-Za-zµ]+))"));
static EMAIL: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // RFC 5322 addr-spec, optionally inside a display name's angle brackets (what Go's
    // `net/mail.ParseAddress` accepts, less comments and quoted display names).
    re(
        r#"^(?:[^<>]*<)?(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*|"[^"\\]*")@(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*|\[[^\]]*\])>?$"#,
    )
});

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// Whether `s` is valid for `format`; `None` when upstream does not check `format`.
pub(crate) fn check(format: &str, s: &str) -> Option<bool> {
    Some(match format {
        "uri" => is_request_uri(s),
        "email" => matches(&EMAIL, s) && (s.contains('<') == s.ends_with('>')),
        "hostname" => {
            matches(&HOSTNAME, s) && s.len() <= 255 && s.split('.').all(|p| p.len() <= 63)
        }
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.contains(':') && s.parse::<Ipv6Addr>().is_ok(),
        "cidr" => is_cidr(s),
        "mac" => is_mac(s),
        "uuid" => matches(&UUID, s),
        "uuid3" => matches(&UUID3, s),
        "uuid4" => matches(&UUID4, s),
        "uuid5" => matches(&UUID5, s),
        "isbn" => is_isbn10(s) || is_isbn13(s),
        "isbn10" => is_isbn10(s),
        "isbn13" => is_isbn13(s),
        "creditcard" => is_credit_card(s),
        "ssn" => s.len() >= 9 && matches(&SSN, s),
        "hexcolor" => matches(&HEXCOLOR, s),
        "rgbcolor" => matches(&RGBCOLOR, s),
        "byte" => matches(&BASE64, s),
        "password" => true,
        "date" => is_date(s),
        "date-time" | "datetime" => is_date_time(s),
        "duration" => is_duration(s),
        _ => return None,
    })
}

/// Go's `url.ParseRequestURI` acceptance: an absolute URI (`scheme:...`) or an absolute path.
fn is_request_uri(s: &str) -> bool {
    if s.is_empty() || s.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return false;
    }
    if s.starts_with('/') {
        return true;
    }
    match s.split_once(':') {
        Some((scheme, _)) => {
            let mut chars = scheme.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    if bits.to_string().len() != s.len() - ip.len() - 1 {
        return false;
    }
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => bits <= 32,
        Ok(IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

/// Go's `net.ParseMAC`: 6, 8 or 20 octets, as `xx:xx:..`, `xx-xx-..` or `xxxx.xxxx.xxxx`.
fn is_mac(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    let ok_len = |n: usize| matches!(n, 6 | 8 | 20);
    if s.contains('.') {
        let parts: Vec<&str> = s.split('.').collect();
        return ok_len(parts.len() * 2) && parts.iter().all(|p| hex(p, 4));
    }
    for sep in [':', '-'] {
        if s.contains(sep) {
            let parts: Vec<&str> = s.split(sep).collect();
            return ok_len(parts.len()) && parts.iter().all(|p| hex(p, 2));
        }
    }
    false
}

fn digits_only(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, ' ' | '-')).collect()
}

fn is_isbn10(s: &str) -> bool {
    let d = digits_only(s);
    let b = d.as_bytes();
    if b.len() != 10 || !b[..9].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let last = match b[9] {
        b'X' => 10,
        c if c.is_ascii_digit() => u32::from(c - b'0'),
        _ => return false,
    };
    let sum: u32 = b[..9]
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u32 + 1) * u32::from(c - b'0'))
        .sum::<u32>()
        + 10 * last;
    sum.is_multiple_of(11)
}

fn is_isbn13(s: &str) -> bool {
    let d = digits_only(s);
    let b = d.as_bytes();
    if b.len() != 13 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = b[..12]
        .iter()
        .enumerate()
        .map(|(i, c)| u32::from(c - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    (10 - sum % 10) % 10 == u32::from(b[12] - b'0')
}

/// A Luhn-valid number of 13 to 19 digits (separators ignored).
fn is_credit_card(s: &str) -> bool {
    let d = digits_only(s);
    if !(13..=19).contains(&d.len()) || !d.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let mut sum = 0;
    for (i, c) in d.bytes().rev().enumerate() {
        let mut n = u32::from(c - b'0');
        if i % 2 == 1 {
            n *= 2;
            if n > 9 {
                n -= 9;
            }
        }
        sum += n;
    }
    sum % 10 == 0
}

fn valid_ymd(y: u32, m: u32, d: u32) -> bool {
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// RFC 3339 `full-date` (`2006-01-02`).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|p| p.parse::<u32>().ok());
    match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => valid_ymd(y, m, d),
        _ => false,
    }
}

/// The date-time layouts of kube-openapi's `strfmt.ParseDateTime` (RFC 3339 with or without
/// fractions and zone colon, ISO 8601 local time, reduced precision).
fn is_date_time(s: &str) -> bool {
    let Some(caps) = DATE_TIME.as_ref().and_then(|r| r.captures(s)) else {
        return false;
    };
    let num = |i: usize| {
        caps.get(i)
            .and_then(|m| m.as_str().parse::<u32>().ok())
            .unwrap_or(0)
    };
    valid_ymd(num(1), num(2), num(3)) && num(4) < 24 && num(5) < 60 && num(7) < 61
}

/// Go's `time.ParseDuration` forms (`1h30m`, `-1.5s`) or kube-openapi's extended ones (`3 days`).
fn is_duration(s: &str) -> bool {
    if is_go_duration(s) {
        return true;
    }
    if !matches(&DURATION, s) {
        return false;
    }
    const UNITS: &[&[&str]] = &[
        &["ns", "nano"],
        &["us", "µs", "micro"],
        &["ms", "milli"],
        &["s", "sec"],
        &["m", "min"],
        &["h", "hr", "hour"],
        &["d", "day"],
        &["w", "wk", "week"],
    ];
    let Some(part) = DURATION_PART.as_ref() else {
        return false;
    };
    part.captures_iter(s).any(|c| {
        let unit = c
            .get(3)
            .map(|m| m.as_str().trim().to_lowercase())
            .unwrap_or_default();
        UNITS.iter().any(|variants| {
            variants.iter().enumerate().any(|(i, v)| {
                (i == variants.len() - 1 && unit.starts_with(v)) || unit.eq_ignore_ascii_case(v)
            })
        })
    })
}

fn is_go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    if s.is_empty() {
        return false;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..n];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[n..];
        let unit_len = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(*u))
            .map(|u| u.len());
        match unit_len {
            Some(l) => rest = &rest[l..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn formats_accept_and_reject_like_upstream() {
        let ok = [
            ("uri", "https://example.com/a?b=c"),
            ("uri", "/just/a/path"),
            ("email", "a.b@example.com"),
            ("email", "Jo <jo@example.com>"),
            ("hostname", "my-host.example.com"),
            ("ipv4", "10.0.0.1"),
            ("ipv6", "fe80::1"),
            ("cidr", "10.42.0.0/16"),
            ("cidr", "fd00::/64"),
            ("mac", "00:1a:2B:3c:4d:5e"),
            ("mac", "0000.5e00.5301"),
            ("uuid", "123e4567-e89b-12d3-a456-426614174000"),
            ("uuid4", "123e4567-e89b-42d3-a456-426614174000"),
            ("byte", "aGVsbG8="),
            ("date", "2024-02-29"),
            ("date-time", "2024-02-29T12:30:00Z"),
            ("date-time", "2024-02-29T12:30:00.123+02:00"),
            ("duration", "1h30m"),
            ("duration", "3 days"),
            ("isbn13", "978-3-16-148410-0"),
            ("creditcard", "4111 1111 1111 1111"),
            ("hexcolor", "#fff"),
            ("rgbcolor", "rgb(255, 0, 10)"),
            ("password", "anything"),
        ];
        for (f, s) in ok {
            assert_eq!(check(f, s), Some(true), "{f} {s}");
        }
        let bad = [
            ("uri", "not a uri"),
            ("uri", "relative/path"),
            ("email", "no-at-sign"),
            ("hostname", "-bad-.example.com"),
            ("ipv4", "10.0.0.256"),
            ("ipv4", "fe80::1"),
            ("ipv6", "10.0.0.1"),
            ("cidr", "10.0.0.0/33"),
            ("cidr", "10.0.0.0"),
            ("mac", "00:1a:2b:3c:4d"),
            ("uuid", "123e4567"),
            ("uuid4", "123e4567-e89b-12d3-a456-426614174000"),
            ("byte", "not base64!"),
            ("date", "2023-02-29"),
            ("date", "2024-1-01"),
            ("date-time", "2024-02-29"),
            ("date-time", "2024-02-29T25:00:00Z"),
            ("duration", "forever"),
            ("isbn10", "0306406153"),
            ("creditcard", "4111 1111 1111 1112"),
        ];
        for (f, s) in bad {
            assert_eq!(check(f, s), Some(false), "{f} {s}");
        }
        assert_eq!(check("int32", "x"), None);
        assert_eq!(check("my-format", "x"), None);
    }
}
