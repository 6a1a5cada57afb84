//! A minimal Prometheus registry: request counts by verb, resource and code, in the upstream
//! metric `apiserver_request_total`.

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

/// Counters, shared by all requests.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<Labels, u64>>,
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
}
