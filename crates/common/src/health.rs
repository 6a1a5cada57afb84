//! Health checks as upstream's `k8s.io/apiserver/pkg/server/healthz` serves them on a
//! component's secure port: `/healthz`, `/livez` and `/readyz` answer `ok`, or with `?verbose`
//! one line per check (`[+]ping ok`) and `<endpoint> check passed`; a failing check makes the
//! answer 500 and verbose, its reason withheld (it goes to the log). `?exclude=<check>` leaves
//! a check out; `/healthz/<check>` asks one check alone.

use std::sync::{Arc, Mutex};

/// One check: `Ok`, or why it fails.
pub type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The checks of one component, in the order they were added; `ping` (always healthy) is
/// first. Cloning shares them.
#[derive(Clone)]
pub struct Checks {
    checks: Arc<Mutex<Vec<(String, CheckFn)>>>,
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Default for Checks {
    fn default() -> Self {
        Checks::new()
    }
}

/// What an endpoint answers: the HTTP status and the plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Checks {
    /// The `ping` check alone.
    pub fn new() -> Checks {
        let checks = Checks {
            checks: Arc::default(),
        };
        checks.add("ping", || Ok(()));
        checks
    }

    /// Adds (or replaces) the check `name`.
    pub fn add(&self, name: &str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        let check: CheckFn = Arc::new(check);
        match checks.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = check,
            None => checks.push((name.to_string(), check)),
        }
    }

    pub fn names(&self) -> Vec<String> {
        let checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Runs every check (outside the lock).
    fn run(&self) -> Vec<(String, Result<(), String>)> {
        let checks: Vec<(String, CheckFn)> = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        checks.into_iter().map(|(n, c)| (n, c())).collect()
    }

    /// The answer of `endpoint` (`healthz`, `livez`, `readyz`) to a request with `query` (the
    /// raw query string, if any).
    pub fn answer(&self, endpoint: &str, query: Option<&str>) -> Answer {
        let mut verbose = false;
        let mut excluded: Vec<&str> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "verbose" => verbose = true,
                "exclude" => excluded.extend(value.split(',').filter(|v| !v.is_empty())),
                _ => {}
            }
        }
        let results = self.run();
        let failed = results
            .iter()
            .any(|(name, r)| r.is_err() && !excluded.contains(&name.as_str()));
        if !verbose && !failed {
            return Answer {
                status: 200,
                body: "ok".into(),
            };
        }
        let mut body = String::new();
        for (name, result) in &results {
            if excluded.contains(&name.as_str()) {
                body.push_str(&format!("[+]{name} excluded: ok\n"));
                continue;
            }
            match result {
                Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
                Err(reason) => {
                    tracing::warn!(check = %name, %reason, "{endpoint} check failed");
                    body.push_str(&format!("[-]{name} failed: reason withheld\n"));
                }
            }
        }
        let verdict = if failed { "failed" } else { "passed" };
        body.push_str(&format!("{endpoint} check {verdict}\n"));
        Answer {
            status: if failed { 500 } else { 200 },
            body,
        }
    }

    /// The answer of `/<endpoint>/<check>`: `ok`, 500 `internal server error: <why>`, or 404
    /// for a check this component does not have.
    pub fn answer_one(&self, check: &str) -> Answer {
        match self.run().into_iter().find(|(n, _)| n == check) {
            None => Answer {
                status: 404,
                body: "404 page not found\n".into(),
            },
            Some((_, Ok(()))) => Answer {
                status: 200,
                body: "ok".into(),
            },
            Some((_, Err(e))) => Answer {
                status: 500,
                body: format!("internal server error: {e}\n"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_is_ok_and_verbose_lists_the_checks() {
        let checks = Checks::new();
        checks.add("leaderElection", || Ok(()));
        assert_eq!(
            checks.answer("healthz", None),
            Answer {
                status: 200,
                body: "ok".into()
            }
        );
        assert_eq!(
            checks.answer("livez", Some("verbose")).body,
            "[+]ping ok\n[+]leaderElection ok\nlivez check passed\n"
        );
        assert_eq!(checks.answer_one("ping").body, "ok");
        assert_eq!(checks.answer_one("nope").status, 404);
    }

    #[test]
    fn a_failing_check_is_500_and_verbose_unless_excluded() {
        let checks = Checks::new();
        checks.add("leaderElection", || Err("lease not renewed".into()));
        let a = checks.answer("healthz", None);
        assert_eq!(a.status, 500);
        assert_eq!(
            a.body,
            "[+]ping ok\n[-]leaderElection failed: reason withheld\nhealthz check failed\n"
        );
        let a = checks.answer("readyz", Some("exclude=leaderElection&verbose"));
        assert_eq!(a.status, 200);
        assert_eq!(
            a.body,
            "[+]ping ok\n[+]leaderElection excluded: ok\nreadyz check passed\n"
        );
        let one = checks.answer_one("leaderElection");
        assert_eq!(
            (one.status, one.body.as_str()),
            (500, "internal server error: lease not renewed\n")
        );
    }
}
