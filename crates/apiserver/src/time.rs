//! Timestamps as the Kubernetes API writes them.

use k8s_openapi::jiff::Timestamp;

/// Now, as an RFC 3339 timestamp with second precision (`2026-01-02T03:04:05Z`), the form of
/// `metadata.creationTimestamp`.
pub(crate) fn now_rfc3339() -> String {
    rfc3339_after(0)
}

/// `secs` seconds from now, in the same form.
pub(crate) fn rfc3339_after(secs: i64) -> String {
    let t = now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The current time.
fn now() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Timestamp::from_second(i64::try_from(secs).unwrap_or(0)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    now().as_second()
}

/// Parses an RFC 3339 timestamp.
pub(crate) fn parse(ts: &str) -> Option<Timestamp> {
    ts.parse().ok()
}

/// The age of something created at `ts`, as kubectl prints it (`5s`, `3m`, `2d`): the
/// upstream "human duration" rounding.
pub(crate) fn age(ts: &str) -> String {
    let Some(t) = parse(ts) else {
        return "<unknown>".into();
    };
    let secs = (now().as_second() - t.as_second()).max(0);
    human_duration(secs)
}

pub(crate) fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let dd = d % 365;
        if dd == 0 {
            format!("{}y", d / 365)
        } else {
            format!("{}y{dd}d", d / 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_timestamp_has_second_precision() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z'));
        assert!(parse(&ts).is_some());
    }

    #[test]
    fn ages_round_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(50 * 3600), "2d2h");
        assert_eq!(human_duration(30 * 86400), "30d");
    }
}
