//! A small Prometheus registry: counters and gauges with labels, rendered in the text
//! exposition format (version 0.0.4) as Prometheus' Go client writes it — families sorted by
//! name, `# HELP` (with upstream's stability level, `[ALPHA]`/`[STABLE]`) and `# TYPE`, then
//! one line per label set; a family with no sample yet is left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// The `Content-Type` of [`Registry::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Called before each rendering, to bring gauges up to date (a queue's length read then).
type Hook = Arc<dyn Fn() + Send + Sync>;

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<&'static str>,
    /// Label values (in `labels` order) → value.
    samples: Mutex<BTreeMap<Vec<String>, f64>>,
}

impl Family {
    fn update(&self, values: &[&str], f: impl FnOnce(&mut f64)) {
        if values.len() != self.labels.len() {
            tracing::warn!(metric = %self.name, ?values, "wrong number of label values; ignored");
            return;
        }
        let key = values.iter().map(|v| v.to_string()).collect();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        f(samples.entry(key).or_insert(0.0));
    }

    fn get(&self, values: &[&str]) -> f64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.get(&key).copied().unwrap_or(0.0)
    }
}

/// The metrics of one component. Cloning shares them.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<Family>>>>,
    hooks: Arc<Mutex<Vec<Hook>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(families.iter().map(|f| &f.name))
            .finish()
    }
}

/// A counter family: only goes up.
#[derive(Debug, Clone)]
pub struct Counter(Arc<Family>);

/// A gauge family: set to the current value.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<Family>);

impl Counter {
    /// Adds one to the series of `labels` (the values, in the family's label order).
    pub fn inc(&self, labels: &[&str]) {
        self.inc_by(labels, 1.0);
    }

    pub fn inc_by(&self, labels: &[&str], by: f64) {
        if by >= 0.0 {
            self.0.update(labels, |v| *v += by);
        }
    }

    pub fn get(&self, labels: &[&str]) -> f64 {
        self.0.get(labels)
    }
}

impl Gauge {
    pub fn set(&self, labels: &[&str], value: f64) {
        self.0.update(labels, |v| *v = value);
    }

    pub fn get(&self, labels: &[&str]) -> f64 {
        self.0.get(labels)
    }
}

/// A label value or help text escaped for the text format.
fn escape(v: &str, quote: bool) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn family(&self, name: &str, help: &str, kind: Kind, labels: &[&'static str]) -> Arc<Family> {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = families.iter().find(|f| f.name == name) {
            return f.clone();
        }
        let family = Arc::new(Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            labels: labels.to_vec(),
            samples: Mutex::default(),
        });
        families.push(family.clone());
        family
    }

    /// The counter `name` (registered on first use; `help` starts with the stability level).
    pub fn counter(&self, name: &str, help: &str, labels: &[&'static str]) -> Counter {
        Counter(self.family(name, help, Kind::Counter, labels))
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[&'static str]) -> Gauge {
        Gauge(self.family(name, help, Kind::Gauge, labels))
    }

    /// Runs `hook` before every rendering (to set gauges read from elsewhere).
    pub fn on_render(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(hook));
    }

    /// Every family with samples, in the text exposition format.
    pub fn render(&self) -> String {
        let hooks: Vec<Hook> = self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for hook in hooks {
            hook();
        }
        let mut families: Vec<Arc<Family>> = self
            .families
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        for family in families {
            let samples = family.samples.lock().unwrap_or_else(|e| e.into_inner());
            if samples.is_empty() {
                continue;
            }
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let name = &family.name;
            let _ = writeln!(out, "# HELP {name} {}", escape(&family.help, false));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            // Labels sorted by name, as the Go client writes them.
            let mut order: Vec<usize> = (0..family.labels.len()).collect();
            order.sort_by_key(|i| family.labels[*i]);
            for (values, value) in samples.iter() {
                let labels: Vec<String> = order
                    .iter()
                    .map(|i| format!("{}=\"{}\"", family.labels[*i], escape(&values[*i], true)))
                    .collect();
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_as_the_text_format() {
        let r = Registry::new();
        let attempts = r.counter(
            "scheduler_schedule_attempts_total",
            "[STABLE] Number of attempts.",
            &["result", "profile"],
        );
        let unused = r.gauge("a_gauge_never_set", "[ALPHA] Nothing.", &[]);
        let up = r.gauge("up", "[ALPHA] Up \\ \"now\"\nyes.", &[]);
        attempts.inc(&["scheduled", "default-scheduler"]);
        attempts.inc(&["scheduled", "default-scheduler"]);
        attempts.inc(&["unschedulable", "a\"b"]);
        attempts.inc(&["too few"]);
        up.set(&[], 1.0);
        let _ = unused;
        assert_eq!(attempts.get(&["scheduled", "default-scheduler"]), 2.0);
        assert_eq!(
            r.render(),
            "# HELP scheduler_schedule_attempts_total [STABLE] Number of attempts.\n\
             # TYPE scheduler_schedule_attempts_total counter\n\
             scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"scheduled\"} 2\n\
             scheduler_schedule_attempts_total{profile=\"a\\\"b\",result=\"unschedulable\"} 1\n\
             # HELP up [ALPHA] Up \\\\ \"now\"\\nyes.\n\
             # TYPE up gauge\n\
             up 1\n"
        );
    }

    #[test]
    fn hooks_run_before_rendering() {
        let r = Registry::new();
        let g = r.gauge("pending", "[ALPHA] Pending.", &["queue"]);
        let same = r.gauge("pending", "[ALPHA] Pending.", &["queue"]);
        r.on_render(move || same.set(&["active"], 3.0));
        assert_eq!(g.get(&["active"]), 0.0);
        assert!(r.render().contains("pending{queue=\"active\"} 3\n"));
    }
}
