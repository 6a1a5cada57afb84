//! batch/v1 Job status updates: upstream v1.33's `ValidateJobUpdateStatus` with the options
//! its status strategy computes (`getStatusValidationOptions`) while `JobManagedBy` is on (beta,
//! on by default in v1.33): most rules apply only when the status fields they judge change,
//! so a status that became inconsistent with a later spec change can still be written.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::{NULL, int, invalid_omitted, nonnegative, status};
use crate::status::Cause;
use crate::validation::{duplicate, invalid, items, q, required, str_of};

/// Which of the optional rules apply (upstream's `JobStatusValidationOptions`; the ones this
/// server always applies, or never, are not fields).
#[derive(Debug, Default)]
struct Opts {
    reject_decreasing_succeeded: bool,
    reject_invalid_completed_indexes: bool,
    reject_invalid_failed_indexes: bool,
    reject_failed_indexes_overlapping_completed: bool,
    reject_completed_indexes_for_non_indexed: bool,
    reject_failed_indexes_without_backoff_limit_per_index: bool,
    reject_failed_without_failure_target: bool,
    reject_complete_without_success_criteria_met: bool,
    reject_finished_with_active_pods: bool,
    reject_finished_without_start_time: bool,
    reject_finished_with_uncounted_pods: bool,
    reject_start_time_update_for_unsuspended: bool,
    reject_completion_time_before_start_time: bool,
    reject_complete_without_completion_time: bool,
    reject_not_complete_with_completion_time: bool,
    reject_complete_with_failed: bool,
    reject_complete_with_failure_target: bool,
    reject_more_ready_than_active: bool,
    reject_finished_with_terminating_pods: bool,
}

/// A Job as the rules read it.
struct Job<'a> {
    spec: &'a Value,
    status: &'a Value,
}

impl<'a> Job<'a> {
    fn of(obj: &'a Value) -> Job<'a> {
        Job {
            spec: obj.get("spec").unwrap_or(&NULL),
            status: status(obj),
        }
    }

    /// A condition of type `ty` with status `True` (upstream `IsConditionTrue`).
    fn is(&self, ty: &str) -> bool {
        items(self.status, "conditions")
            .iter()
            .any(|c| str_of(c, "type") == ty && str_of(c, "status") == "True")
    }

    fn complete(&self) -> bool {
        self.is("Complete")
    }

    fn failed(&self) -> bool {
        self.is("Failed")
    }

    fn finished(&self) -> bool {
        self.complete() || self.failed()
    }

    fn success_criteria_met(&self) -> bool {
        self.is("SuccessCriteriaMet")
    }

    fn failure_target(&self) -> bool {
        self.is("FailureTarget")
    }

    fn count(&self, key: &str) -> i64 {
        int(self.status, key).unwrap_or(0)
    }

    fn completed_indexes(&self) -> &'a str {
        str_of(self.status, "completedIndexes")
    }

    /// `failedIndexes`, a pointer upstream: unset and empty differ.
    fn failed_indexes(&self) -> Option<&'a str> {
        self.status.get("failedIndexes").and_then(Value::as_str)
    }

    fn time(&self, key: &str) -> Option<Time<'a>> {
        self.status
            .get(key)
            .and_then(Value::as_str)
            .map(|raw| Time {
                raw,
                at: crate::time::parse(raw),
            })
    }

    fn completions(&self) -> Option<i64> {
        int(self.spec, "completions")
    }

    fn indexed(&self) -> bool {
        str_of(self.spec, "completionMode") == "Indexed"
    }

    fn backoff_limit_per_index(&self) -> bool {
        self.spec
            .get("backoffLimitPerIndex")
            .is_some_and(|v| !v.is_null())
    }

    /// `uncountedTerminatedPods` as upstream's semantic equality sees it: unset differs from
    /// an empty struct, an unset list equals an empty one.
    fn uncounted(&self) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
        let u = self
            .status
            .get("uncountedTerminatedPods")
            .filter(|u| !u.is_null())?;
        let uids = |key| {
            items(u, key)
                .iter()
                .map(|v| v.as_str().unwrap_or_default())
                .collect()
        };
        Some((uids("succeeded"), uids("failed")))
    }
}

/// A `metav1.Time` of the status.
#[derive(Clone, Copy)]
struct Time<'a> {
    raw: &'a str,
    at: Option<Timestamp>,
}

impl Time<'_> {
    /// How `field.Error` shows a `*metav1.Time`: Go's `time.Time.String()` (UTC).
    fn shown(&self) -> String {
        match self.at {
            Some(t) => t.strftime("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
            None => q(self.raw),
        }
    }
}

impl PartialEq for Time<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self.at, other.at) {
            (Some(a), Some(b)) => a == b,
            _ => self.raw == other.raw,
        }
    }
}

/// `getStatusValidationOptions` of v1.33 with `JobManagedBy` on.
fn options(new: &Job<'_>, old: &Job<'_>) -> Opts {
    let finished_changed = old.finished() != new.finished();
    let complete_changed = old.complete() != new.complete();
    let failed_changed = old.failed() != new.failed();
    let failure_target_changed = old.failure_target() != new.failure_target();
    let success_criteria_met_changed = old.success_criteria_met() != new.success_criteria_met();
    let completed_indexes_changed = old.completed_indexes() != new.completed_indexes();
    let failed_indexes_changed = old.failed_indexes() != new.failed_indexes();
    let active_changed = old.count("active") != new.count("active");
    let start_time_changed = old.time("startTime") != new.time("startTime");
    let completion_time_changed = old.time("completionTime") != new.time("completionTime");
    let uncounted_changed = old.uncounted() != new.uncounted();
    let ready_changed = int(old.status, "ready") != int(new.status, "ready");
    let terminating_changed = int(old.status, "terminating") != int(new.status, "terminating");
    let suspended_with_zero_completions = new.spec.get("suspend").and_then(Value::as_bool)
        == Some(true)
        && new.completions() == Some(0);
    Opts {
        // Indexed Jobs with completions == parallelism may scale down and lose successes.
        reject_decreasing_succeeded: !new.indexed()
            || new.completions() != int(new.spec, "parallelism"),
        reject_invalid_completed_indexes: completed_indexes_changed,
        reject_invalid_failed_indexes: failed_indexes_changed,
        reject_failed_indexes_overlapping_completed: failed_indexes_changed
            || completed_indexes_changed,
        reject_completed_indexes_for_non_indexed: completed_indexes_changed,
        reject_failed_indexes_without_backoff_limit_per_index: failed_indexes_changed,
        reject_failed_without_failure_target: failed_changed || failed_indexes_changed,
        reject_complete_without_success_criteria_met: complete_changed
            || success_criteria_met_changed,
        reject_finished_with_active_pods: finished_changed || active_changed,
        reject_finished_without_start_time: (finished_changed || start_time_changed)
            && !suspended_with_zero_completions,
        reject_finished_with_uncounted_pods: finished_changed || uncounted_changed,
        reject_start_time_update_for_unsuspended: start_time_changed,
        reject_completion_time_before_start_time: start_time_changed || completion_time_changed,
        reject_complete_without_completion_time: complete_changed || completion_time_changed,
        reject_not_complete_with_completion_time: complete_changed || completion_time_changed,
        reject_complete_with_failed: complete_changed || failed_changed,
        reject_complete_with_failure_target: complete_changed || failure_target_changed,
        reject_more_ready_than_active: ready_changed || active_changed,
        reject_finished_with_terminating_pods: finished_changed || terminating_changed,
    }
}

/// `ValidateJobUpdateStatus`.
pub(super) fn job(obj: &Value, old: &Value) -> Vec<Cause> {
    let (new, old) = (Job::of(obj), Job::of(old));
    let opts = options(&new, &old);
    let mut causes = job_status(&new, &opts);
    for ty in ["Failed", "Complete", "FailureTarget"] {
        if old.is(ty) && !new.is(ty) {
            causes.push(invalid_omitted(
                "status.conditions",
                &format!("cannot disable the terminal {ty}=True condition"),
            ));
        }
    }
    for (key, reject) in [
        ("failed", true),
        ("succeeded", opts.reject_decreasing_succeeded),
    ] {
        let n = new.count(key);
        if reject && n < old.count(key) {
            causes.push(invalid(
                format!("status.{key}"),
                &n.to_string(),
                &format!("cannot decrease the {key} counter"),
            ));
        }
    }
    if let (Some(t), Some(was)) = (new.time("completionTime"), old.time("completionTime"))
        && t != was
    {
        causes.push(invalid(
            "status.completionTime",
            &t.shown(),
            "completionTime cannot be mutated",
        ));
    }
    if opts.reject_start_time_update_for_unsuspended
        && old.time("startTime").is_some()
        && new.spec.get("suspend").and_then(Value::as_bool) != Some(true)
    {
        causes.push(required(
            "status.startTime",
            "startTime cannot be removed for unsuspended job",
        ));
    }
    if old.success_criteria_met() && !new.success_criteria_met() {
        causes.push(invalid_omitted(
            "status.conditions",
            "cannot disable the SuccessCriteriaMet=True condition",
        ));
    }
    if old.complete() && !old.success_criteria_met() && new.success_criteria_met() {
        causes.push(invalid_omitted(
            "status.conditions",
            "cannot set SuccessCriteriaMet=True for Job already has Complete=true conditions",
        ));
    }
    causes
}

/// `validateJobStatus`.
fn job_status(job: &Job<'_>, opts: &Opts) -> Vec<Cause> {
    let s = job.status;
    let mut causes = Vec::new();
    for key in ["active", "succeeded", "failed", "ready", "terminating"] {
        nonnegative(&mut causes, s, key, &format!("status.{key}"));
    }
    let uncounted = job.uncounted();
    if let Some((succeeded, failed)) = &uncounted {
        let mut seen = BTreeSet::new();
        for (key, uids) in [("succeeded", succeeded), ("failed", failed)] {
            for (i, uid) in uids.iter().enumerate() {
                let at = format!("status.uncountedTerminatedPods.{key}[{i}]");
                if uid.is_empty() {
                    causes.push(invalid(at, &q(uid), "must not be empty"));
                } else if !seen.insert(*uid) {
                    causes.push(duplicate(at, &q(uid)));
                }
            }
        }
    }
    let conditions = "status.conditions";
    if opts.reject_complete_with_failed && job.complete() && job.failed() {
        causes.push(invalid_omitted(
            conditions,
            "cannot set Complete=True and Failed=true conditions",
        ));
    }
    if opts.reject_complete_with_failure_target && job.complete() && job.failure_target() {
        causes.push(invalid_omitted(
            conditions,
            "cannot set Complete=True and FailureTarget=true conditions",
        ));
    }
    let (start, completion) = (job.time("startTime"), job.time("completionTime"));
    if opts.reject_not_complete_with_completion_time
        && let Some(t) = completion
        && !job.complete()
    {
        causes.push(invalid(
            "status.completionTime",
            &t.shown(),
            "cannot set completionTime when there is no Complete=True condition",
        ));
    }
    if opts.reject_complete_without_completion_time && completion.is_none() && job.complete() {
        causes.push(required(
            "status.completionTime",
            "completionTime is required for Complete jobs",
        ));
    }
    if opts.reject_completion_time_before_start_time
        && let (Some(start), Some(end)) = (start, completion)
        && let (Some(a), Some(b)) = (start.at, end.at)
        && b < a
    {
        causes.push(invalid(
            "status.completionTime",
            &end.shown(),
            "completionTime cannot be set before startTime",
        ));
    }
    if opts.reject_failed_without_failure_target && job.failed() && !job.failure_target() {
        causes.push(invalid_omitted(
            conditions,
            "cannot set Failed=True condition without the FailureTarget=true condition",
        ));
    }
    if opts.reject_complete_without_success_criteria_met
        && job.complete()
        && !job.success_criteria_met()
    {
        causes.push(invalid_omitted(
            conditions,
            "cannot set Complete=True condition without the SuccessCriteriaMet=true condition",
        ));
    }
    let finished = job.finished();
    let active = job.count("active");
    if opts.reject_finished_with_active_pods && active > 0 && finished {
        causes.push(invalid(
            "status.active",
            &active.to_string(),
            "active>0 is invalid for finished job",
        ));
    }
    if opts.reject_finished_without_start_time && start.is_none() && finished {
        causes.push(required(
            "status.startTime",
            "startTime is required for finished job",
        ));
    }
    if opts.reject_finished_with_uncounted_pods
        && finished
        && let Some((succeeded, failed)) = &uncounted
        && !(succeeded.is_empty() && failed.is_empty())
    {
        causes.push(invalid(
            "status.uncountedTerminatedPods",
            &show_uncounted(s.get("uncountedTerminatedPods").unwrap_or(&NULL)),
            "uncountedTerminatedPods needs to be empty for finished job",
        ));
    }
    let completed = job.completed_indexes();
    if opts.reject_invalid_completed_indexes
        && let Some(completions) = job.completions()
        && let Err(e) = indexes_format(completed, completions)
    {
        causes.push(invalid(
            "status.completedIndexes",
            &q(completed),
            &format!("error parsing completedIndexes: {e}"),
        ));
    }
    let failed_indexes = job.failed_indexes();
    if opts.reject_invalid_failed_indexes
        && let Some(completions) = job.completions()
        && job.backoff_limit_per_index()
        && let Some(failed) = failed_indexes
        && let Err(e) = indexes_format(failed, completions)
    {
        causes.push(invalid(
            "status.failedIndexes",
            &q(failed),
            &format!("error parsing failedIndexes: {e}"),
        ));
    }
    if opts.reject_completed_indexes_for_non_indexed && !completed.is_empty() && !job.indexed() {
        causes.push(invalid(
            "status.completedIndexes",
            &q(completed),
            "cannot set non-empty completedIndexes when non-indexed completion mode",
        ));
    }
    if opts.reject_failed_indexes_without_backoff_limit_per_index
        && !job.backoff_limit_per_index()
        && let Some(failed) = failed_indexes
    {
        causes.push(invalid(
            "status.failedIndexes",
            &q(failed),
            "cannot set non-null failedIndexes when backoffLimitPerIndex is null",
        ));
    }
    if opts.reject_failed_indexes_overlapping_completed
        && let Some(completions) = job.completions()
        && let Some(failed) = failed_indexes
        && let Err(e) = no_overlap(completed, failed, completions)
    {
        causes.push(invalid("status.failedIndexes", &q(failed), &e));
    }
    if opts.reject_finished_with_terminating_pods
        && let Some(n) = int(s, "terminating")
        && n > 0
        && finished
    {
        causes.push(invalid(
            "status.terminating",
            &n.to_string(),
            "terminating>0 is invalid for finished job",
        ));
    }
    if opts.reject_more_ready_than_active
        && let Some(ready) = int(s, "ready")
        && ready > active
    {
        causes.push(invalid(
            "status.ready",
            &ready.to_string(),
            "cannot set more ready pods than active",
        ));
    }
    let met = job.success_criteria_met();
    if met && job.failed() {
        causes.push(invalid_omitted(
            conditions,
            "cannot set SuccessCriteriaMet=True and Failed=true conditions",
        ));
    }
    if met && job.failure_target() {
        causes.push(invalid_omitted(
            conditions,
            "cannot set SuccessCriteriaMet=True and FailureTarget=true conditions",
        ));
    }
    let success_policy = job.spec.get("successPolicy").is_some_and(|p| !p.is_null());
    if success_policy && !met && job.complete() {
        causes.push(invalid_omitted(
            conditions,
            "cannot set Complete=True for Job with SuccessPolicy unless SuccessCriteriaMet=True",
        ));
    }
    causes
}

/// `batch.UncountedTerminatedPods` as Go's `%#v` shows it.
fn show_uncounted(u: &Value) -> String {
    let list = |key: &str| match u.get(key).and_then(Value::as_array) {
        None => "[]types.UID(nil)".to_string(),
        Some(uids) => {
            let shown: Vec<String> = uids
                .iter()
                .map(|v| q(v.as_str().unwrap_or_default()))
                .collect();
            format!("[]types.UID{{{}}}", shown.join(", "))
        }
    };
    format!(
        "batch.UncountedTerminatedPods{{Succeeded:{}, Failed:{}}}",
        list("succeeded"),
        list("failed")
    )
}

/// Go's `strconv.Atoi`: an optional sign and decimal digits, within 64 bits.
fn atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.strip_prefix('+').unwrap_or(s).parse().ok()
}

/// `parseIndexInterval`: `x` or `x-y` (`x < y`), each below `completions`.
fn index_interval(interval: &str, completions: i64) -> Result<(i64, i64), String> {
    let parts: Vec<&str> = interval.split('-').collect();
    if parts.len() > 2 {
        return Err(format!(
            "the fragment {} violates the requirement that an index interval can have at most \
             two parts separated by '-'",
            q(interval)
        ));
    }
    let bound = |part: &str| -> Result<i64, String> {
        let n = atoi(part)
            .ok_or_else(|| format!("cannot convert string to integer for index: {}", q(part)))?;
        if n >= completions {
            return Err(format!("too large index: {}", q(part)));
        }
        Ok(n)
    };
    let x = bound(parts[0])?;
    match parts.get(1) {
        None => Ok((x, x)),
        Some(part) => {
            let y = bound(part)?;
            if x >= y {
                return Err(format!("non-increasing order, previous: {x}, current: {y}"));
            }
            Ok((x, y))
        }
    }
}

/// `validateIndexesFormat`: comma-separated increasing intervals.
fn indexes_format(indexes: &str, completions: i64) -> Result<(), String> {
    if indexes.is_empty() {
        return Ok(());
    }
    let mut last: Option<i64> = None;
    for interval in indexes.split(',') {
        let (x, y) = index_interval(interval, completions)?;
        if let Some(last) = last
            && last >= x
        {
            return Err(format!(
                "non-increasing order, previous: {last}, current: {x}"
            ));
        }
        last = Some(y);
    }
    Ok(())
}

/// `validateFailedIndexesNotOverlapCompleted`: intervals that do not parse are skipped (the
/// format checks report them).
fn no_overlap(completed: &str, failed: &str, completions: i64) -> Result<(), String> {
    if completed.is_empty() || failed.is_empty() {
        return Ok(());
    }
    let completed: Vec<&str> = completed.split(',').collect();
    let failed: Vec<&str> = failed.split(',').collect();
    let (mut ci, mut fi) = (0, 0);
    let mut c = index_interval(completed[0], completions);
    let mut f = index_interval(failed[0], completions);
    while ci < completed.len() && fi < failed.len() {
        match (&c, &f) {
            (Err(_), _) => {
                ci += 1;
                if ci < completed.len() {
                    c = index_interval(completed[ci], completions);
                }
            }
            (_, Err(_)) => {
                fi += 1;
                if fi < failed.len() {
                    f = index_interval(failed[fi], completions);
                }
            }
            (Ok((cx, cy)), Ok((fx, fy))) => {
                if cx <= fy && fx <= cy {
                    return Err(format!(
                        "failedIndexes and completedIndexes overlap at index: {}",
                        cx.max(fx)
                    ));
                }
                if cx <= fx {
                    ci += 1;
                    if ci < completed.len() {
                        c = index_interval(completed[ci], completions);
                    }
                } else {
                    fi += 1;
                    if fi < failed.len() {
                        f = index_interval(failed[fi], completions);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, info};
    use super::*;
    use serde_json::json;

    fn jobs() -> &'static crate::registry::ResourceInfo {
        info("batch", "v1", "jobs")
    }

    fn cond(ty: &str) -> Value {
        json!({"type": ty, "status": "True", "lastTransitionTime": "2026-01-01T00:00:10Z"})
    }

    #[test]
    fn index_lists_as_upstream_parses_them() {
        assert_eq!(indexes_format("0,2-4,7", 8), Ok(()));
        assert_eq!(indexes_format("", 0), Ok(()));
        assert_eq!(
            indexes_format("1-2-3", 8),
            Err(
                "the fragment \"1-2-3\" violates the requirement that an index interval can \
                 have at most two parts separated by '-'"
                    .into()
            )
        );
        assert_eq!(
            indexes_format("a", 8),
            Err("cannot convert string to integer for index: \"a\"".into())
        );
        assert_eq!(indexes_format("8", 8), Err("too large index: \"8\"".into()));
        assert_eq!(
            indexes_format("3-1", 8),
            Err("non-increasing order, previous: 3, current: 1".into())
        );
        assert_eq!(
            indexes_format("2-3,3", 8),
            Err("non-increasing order, previous: 3, current: 3".into())
        );
        assert_eq!(
            no_overlap("0-2,5", "3,5-6", 8),
            Err("failedIndexes and completedIndexes overlap at index: 5".into())
        );
        assert_eq!(no_overlap("0-2,x,6", "3-5,7", 8), Ok(()));
    }

    #[test]
    fn what_the_job_controller_writes_passes() {
        let old = json!({"spec": {"completions": 2, "parallelism": 2, "backoffLimit": 6},
                         "status": {"startTime": "2026-01-01T00:00:00Z", "active": 2,
                                    "ready": 0, "terminating": 0}});
        let running = json!({"startTime": "2026-01-01T00:00:00Z", "active": 1, "ready": 1,
                             "succeeded": 1, "terminating": 0,
                             "uncountedTerminatedPods": {"succeeded": ["uid-1"]}});
        assert!(check(jobs(), &old, running).is_empty());
        let mut met = old.clone();
        met["status"] = json!({"startTime": "2026-01-01T00:00:00Z", "active": 0, "ready": 0,
                               "succeeded": 2, "terminating": 0,
                               "conditions": [cond("SuccessCriteriaMet")]});
        let done = json!({"startTime": "2026-01-01T00:00:00Z", "active": 0, "ready": 0,
                          "succeeded": 2, "terminating": 0,
                          "completionTime": "2026-01-01T00:00:10Z",
                          "uncountedTerminatedPods": {},
                          "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]});
        assert!(check(jobs(), &met, done).is_empty());
    }

    #[test]
    fn counts_uids_and_terminal_conditions() {
        let old = json!({"spec": {"completions": 1, "parallelism": 1},
                         "status": {"active": 1, "failed": 2, "succeeded": 1}});
        assert_eq!(
            check(
                jobs(),
                &old,
                json!({"active": -1, "failed": 1, "succeeded": 0, "ready": -1,
                       "uncountedTerminatedPods": {"succeeded": ["a", ""], "failed": ["a"]}})
            ),
            [
                "status.active: Invalid value: -1: must be greater than or equal to 0",
                "status.ready: Invalid value: -1: must be greater than or equal to 0",
                "status.uncountedTerminatedPods.succeeded[1]: Invalid value: \"\": must not be empty",
                "status.uncountedTerminatedPods.failed[0]: Duplicate value: \"a\"",
                "status.failed: Invalid value: 1: cannot decrease the failed counter",
                "status.succeeded: Invalid value: 0: cannot decrease the succeeded counter",
            ]
        );
        // Complete and Failed straight away, with pods left.
        assert_eq!(
            check(
                jobs(),
                &old,
                json!({"active": 1, "failed": 2, "succeeded": 1, "terminating": 1,
                       "completionTime": "2025-12-31T23:59:00Z",
                       "startTime": "2026-01-01T00:00:00Z",
                       "uncountedTerminatedPods": {"failed": ["b"]},
                       "conditions": [cond("Complete"), cond("Failed")]})
            ),
            [
                "status.conditions: Invalid value: cannot set Complete=True and Failed=true conditions",
                "status.completionTime: Invalid value: 2025-12-31 23:59:00 +0000 UTC: completionTime \
                 cannot be set before startTime",
                "status.conditions: Invalid value: cannot set Failed=True condition without the \
                 FailureTarget=true condition",
                "status.conditions: Invalid value: cannot set Complete=True condition without the \
                 SuccessCriteriaMet=true condition",
                "status.active: Invalid value: 1: active>0 is invalid for finished job",
                "status.uncountedTerminatedPods: Invalid value: \
                 batch.UncountedTerminatedPods{Succeeded:[]types.UID(nil), Failed:[]types.UID{\"b\"}}: \
                 uncountedTerminatedPods needs to be empty for finished job",
                "status.terminating: Invalid value: 1: terminating>0 is invalid for finished job",
            ]
        );
    }

    #[test]
    fn times_and_terminal_transitions() {
        let old = json!({"spec": {"completions": 1},
                         "status": {"startTime": "2026-01-01T00:00:00Z",
                                    "completionTime": "2026-01-01T00:01:00Z",
                                    "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]}});
        assert_eq!(
            check(
                jobs(),
                &old,
                json!({"completionTime": "2026-01-01T00:02:00Z"})
            ),
            [
                "status.completionTime: Invalid value: 2026-01-01 00:02:00 +0000 UTC: cannot set \
                 completionTime when there is no Complete=True condition",
                "status.conditions: Invalid value: cannot disable the terminal Complete=True condition",
                "status.completionTime: Invalid value: 2026-01-01 00:02:00 +0000 UTC: \
                 completionTime cannot be mutated",
                "status.startTime: Required value: startTime cannot be removed for unsuspended job",
                "status.conditions: Invalid value: cannot disable the SuccessCriteriaMet=True condition",
            ]
        );
        let fresh = json!({"spec": {"completions": 1}, "status": {}});
        assert_eq!(
            check(
                jobs(),
                &fresh,
                json!({"conditions": [cond("SuccessCriteriaMet"), cond("Complete")]})
            ),
            [
                "status.completionTime: Required value: completionTime is required for Complete jobs",
                "status.startTime: Required value: startTime is required for finished job",
            ]
        );
        // A suspended Job with no completions may finish without having started.
        let empty = json!({"spec": {"completions": 0, "suspend": true}, "status": {}});
        assert!(
            check(
                jobs(),
                &empty,
                json!({"completionTime": "2026-01-01T00:00:00Z",
                       "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]})
            )
            .is_empty()
        );
    }

    #[test]
    fn indexes_only_when_they_change() {
        let old = json!({"spec": {"completions": 4, "parallelism": 2, "completionMode": "Indexed",
                                  "backoffLimitPerIndex": 1},
                         "status": {"completedIndexes": "9", "active": 2}});
        // Unchanged, already bad: accepted.
        assert!(check(jobs(), &old, json!({"completedIndexes": "9", "active": 1})).is_empty());
        assert_eq!(
            check(
                jobs(),
                &old,
                json!({"completedIndexes": "0-2", "failedIndexes": "2,x", "active": 1, "ready": 2})
            ),
            [
                "status.failedIndexes: Invalid value: \"2,x\": error parsing failedIndexes: \
                 cannot convert string to integer for index: \"x\"",
                "status.failedIndexes: Invalid value: \"2,x\": failedIndexes and completedIndexes \
                 overlap at index: 2",
                "status.ready: Invalid value: 2: cannot set more ready pods than active",
            ]
        );
        let plain = json!({"spec": {"completions": 4}, "status": {}});
        assert_eq!(
            check(
                jobs(),
                &plain,
                json!({"completedIndexes": "1", "failedIndexes": ""})
            ),
            [
                "status.completedIndexes: Invalid value: \"1\": cannot set non-empty \
                 completedIndexes when non-indexed completion mode",
                "status.failedIndexes: Invalid value: \"\": cannot set non-null failedIndexes \
                 when backoffLimitPerIndex is null",
            ]
        );
    }

    #[test]
    fn success_criteria() {
        let old = json!({"spec": {"completions": 2, "completionMode": "Indexed",
                                  "successPolicy": {"rules": [{"succeededCount": 1}]}},
                         "status": {"startTime": "2026-01-01T00:00:00Z",
                                    "conditions": [cond("FailureTarget")]}});
        assert_eq!(
            check(
                jobs(),
                &old,
                json!({"startTime": "2026-01-01T00:00:00Z",
                       "conditions": [cond("FailureTarget"), cond("SuccessCriteriaMet")]})
            ),
            [
                "status.conditions: Invalid value: cannot set SuccessCriteriaMet=True and \
              FailureTarget=true conditions"
            ]
        );
        let done = json!({"spec": {"completions": 2, "completionMode": "Indexed",
                                   "successPolicy": {"rules": [{"succeededCount": 1}]}},
                          "status": {"startTime": "2026-01-01T00:00:00Z",
                                     "completionTime": "2026-01-01T00:00:10Z",
                                     "conditions": [cond("Complete")]}});
        assert_eq!(
            check(
                jobs(),
                &done,
                json!({"startTime": "2026-01-01T00:00:00Z",
                       "completionTime": "2026-01-01T00:00:10Z",
                       "conditions": [cond("Complete"), cond("SuccessCriteriaMet")]})
            ),
            [
                "status.conditions: Invalid value: cannot set SuccessCriteriaMet=True for Job \
                 already has Complete=true conditions"
            ]
        );
    }
}
