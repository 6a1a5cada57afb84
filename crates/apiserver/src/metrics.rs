//! A minimal Prometheus registry: request counts by verb, resource and code, in the upstream
//! metric `apiserver_request_total`; and upstream's admission webhook metrics (labels and
//! help texts as `k8s.io/apiserver/pkg/admission/metrics`):
//! `apiserver_admission_webhook_admission_duration_seconds` (histogram; name, operation,
//! rejected, type), `apiserver_admission_webhook_rejection_count` (error_type, name,
//! operation, rejection_code, type) and `apiserver_admission_webhook_request_total` (code,
//! name, operation, rejected, type); `type` is `admit` (mutating) or `validating`, codes above
//! 600 are recorded as 600. Not kept: the fail-open and match-condition metrics, the
//! step/controller admission metrics, the conversion webhooks' metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::registry::ResourceInfo;

type Labels = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    String,
    u16,
);

/// The buckets of `apiserver_admission_webhook_admission_duration_seconds`.
const WEBHOOK_BUCKETS: [f64; 8] = [0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0];

/// A webhook call's labels: name, type (step), operation, then rejected or a code.
type WebhookLabels = (String, &'static str, &'static str, bool);

/// One histogram series: per-bucket counts (not cumulative), sum, count.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; WEBHOOK_BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// What the admission webhook metrics hold.
#[derive(Debug, Default)]
struct Webhooks {
    durations: BTreeMap<WebhookLabels, Histogram>,
    /// (name, type, operation, rejected, code) → count.
    requests: BTreeMap<(String, &'static str, &'static str, bool, u16), u64>,
    /// (name, type, operation, error type, rejection code) → count.
    rejections: BTreeMap<(String, &'static str, &'static str, &'static str, u16), u64>,
}

/// Counters, shared by all requests.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<Labels, u64>>,
    webhooks: Mutex<Webhooks>,
}

/// A label value in the text exposition.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub(crate) fn record(
        &self,
        verb: &'static str,
        info: &ResourceInfo,
        subresource: Option<&str>,
        code: u16,
    ) {
        let key = (
            verb,
            info.group,
            info.version,
            info.plural,
            subresource.unwrap_or("").to_string(),
            code,
        );
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(key).or_default() += 1;
        }
    }

    /// One call of an admission webhook (upstream's `ObserveWebhook`): `step` is `admit` or
    /// `validating`, `code` the HTTP-like status of its outcome (200 allowed, the denial's
    /// code, the failure's, 0 for an apiserver-internal error).
    pub(crate) fn observe_webhook(
        &self,
        name: &str,
        step: &'static str,
        operation: &'static str,
        rejected: bool,
        code: u16,
        elapsed: std::time::Duration,
    ) {
        let Ok(mut w) = self.webhooks.lock() else {
            return;
        };
        *w.requests
            .entry((name.to_string(), step, operation, rejected, code.min(600)))
            .or_default() += 1;
        let h = w
            .durations
            .entry((name.to_string(), step, operation, rejected))
            .or_default();
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = WEBHOOK_BUCKETS.iter().position(|b| seconds <= *b) {
            h.buckets[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// A webhook that rejected a request (upstream's `ObserveWebhookRejection`): `error_type`
    /// is `no_error` (a denial), `calling_webhook_error` or `apiserver_internal_error`.
    pub(crate) fn observe_webhook_rejection(
        &self,
        name: &str,
        step: &'static str,
        operation: &'static str,
        error_type: &'static str,
        code: u16,
    ) {
        if let Ok(mut w) = self.webhooks.lock() {
            *w.rejections
                .entry((name.to_string(), step, operation, error_type, code.min(600)))
                .or_default() += 1;
        }
    }

    /// The admission webhook metrics in the text exposition (labels sorted by name, as
    /// Prometheus' Go client writes them).
    fn render_webhooks(&self, out: &mut String) {
        let Ok(w) = self.webhooks.lock() else {
            return;
        };
        if !w.durations.is_empty() {
            let m = "apiserver_admission_webhook_admission_duration_seconds";
            let _ = writeln!(
                out,
                "# HELP {m} [STABLE] Admission webhook latency histogram in seconds, identified \
                 by name and broken out for each operation and API resource and type (validate \
                 or admit).\n# TYPE {m} histogram"
            );
            for ((name, step, op, rejected), h) in &w.durations {
                let labels = format!(
                    "name=\"{}\",operation=\"{op}\",rejected=\"{rejected}\",type=\"{step}\"",
                    escape(name)
                );
                let mut cumulative = 0;
                for (b, n) in WEBHOOK_BUCKETS.iter().zip(h.buckets) {
                    cumulative += n;
                    let _ = writeln!(out, "{m}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{m}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{m}_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(out, "{m}_count{{{labels}}} {}", h.count);
            }
        }
        if !w.rejections.is_empty() {
            let m = "apiserver_admission_webhook_rejection_count";
            let _ = writeln!(
                out,
                "# HELP {m} [ALPHA] Admission webhook rejection count, identified by name and \
                 broken out for each admission type (validating or admit) and operation. \
                 Additional labels specify an error type (calling_webhook_error or \
                 apiserver_internal_error if an error occurred; no_error otherwise) and \
                 optionally a non-zero rejection code if the webhook rejects the request with \
                 an HTTP status code (honored by the apiserver when the code is greater or \
                 equal to 400). Codes greater than 600 are truncated to 600, to keep the \
                 metrics cardinality bounded.\n# TYPE {m} counter"
            );
            for ((name, step, op, error_type, code), n) in &w.rejections {
                let _ = writeln!(
                    out,
                    "{m}{{error_type=\"{error_type}\",name=\"{}\",operation=\"{op}\",rejection_code=\"{code}\",type=\"{step}\"}} {n}",
                    escape(name)
                );
            }
        }
        if !w.requests.is_empty() {
            let m = "apiserver_admission_webhook_request_total";
            let _ = writeln!(
                out,
                "# HELP {m} [ALPHA] Admission webhook request total, identified by name and \
                 broken out for each admission type (validating or mutating) and operation. \
                 Additional labels specify whether the request was rejected or not and an HTTP \
                 status code. Codes greater than 600 are truncated to 600, to keep the metrics \
                 cardinality bounded.\n# TYPE {m} counter"
            );
            for ((name, step, op, rejected, code), n) in &w.requests {
                let _ = writeln!(
                    out,
                    "{m}{{code=\"{code}\",name=\"{}\",operation=\"{op}\",rejected=\"{rejected}\",type=\"{step}\"}} {n}",
                    escape(name)
                );
            }
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::from(
            "# HELP apiserver_request_total Counter of apiserver requests broken out for each \
             verb, group, version, resource, subresource and HTTP response code.\n\
             # TYPE apiserver_request_total counter\n",
        );
        if let Ok(m) = self.requests.lock() {
            for ((verb, group, version, resource, sub, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "apiserver_request_total{{code=\"{code}\",component=\"apiserver\",group=\"{group}\",resource=\"{resource}\",subresource=\"{sub}\",verb=\"{verb}\",version=\"{version}\"}} {n}"
                );
            }
        }
        self.render_webhooks(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_labels() {
        let m = Metrics::default();
        let cm = crate::registry::REGISTRY
            .find("", "v1", "configmaps")
            .expect("cm");
        m.record("GET", cm, None, 200);
        m.record("GET", cm, None, 200);
        m.record("POST", cm, None, 409);
        let text = m.render();
        assert!(text.contains("# TYPE apiserver_request_total counter"));
        assert!(text.contains(
            "apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"\",resource=\"configmaps\",subresource=\"\",verb=\"GET\",version=\"v1\"} 2"
        ), "{text}");
        assert!(text.contains("code=\"409\""));
    }

    #[test]
    fn webhook_calls_are_rendered_as_upstream() {
        let m = Metrics::default();
        let ms = std::time::Duration::from_millis;
        m.observe_webhook("v.example.com", "validating", "CREATE", false, 200, ms(3));
        m.observe_webhook("v.example.com", "validating", "CREATE", false, 200, ms(30));
        m.observe_webhook("v.example.com", "validating", "CONNECT", true, 403, ms(1));
        m.observe_webhook_rejection("v.example.com", "validating", "CONNECT", "no_error", 403);
        m.observe_webhook("m", "admit", "UPDATE", true, 700, ms(1));
        let text = m.render();
        let d = "apiserver_admission_webhook_admission_duration_seconds";
        let labels =
            "name=\"v.example.com\",operation=\"CREATE\",rejected=\"false\",type=\"validating\"";
        for line in [
            format!("# TYPE {d} histogram"),
            format!("{d}_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("{d}_bucket{{{labels},le=\"0.025\"}} 1"),
            format!("{d}_bucket{{{labels},le=\"0.1\"}} 2"),
            format!("{d}_bucket{{{labels},le=\"25\"}} 2"),
            format!("{d}_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("{d}_count{{{labels}}} 2"),
            "apiserver_admission_webhook_request_total{code=\"200\",name=\"v.example.com\",operation=\"CREATE\",rejected=\"false\",type=\"validating\"} 2".into(),
            "apiserver_admission_webhook_request_total{code=\"403\",name=\"v.example.com\",operation=\"CONNECT\",rejected=\"true\",type=\"validating\"} 1".into(),
            "apiserver_admission_webhook_request_total{code=\"600\",name=\"m\",operation=\"UPDATE\",rejected=\"true\",type=\"admit\"} 1".into(),
            "apiserver_admission_webhook_rejection_count{error_type=\"no_error\",name=\"v.example.com\",operation=\"CONNECT\",rejection_code=\"403\",type=\"validating\"} 1".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
