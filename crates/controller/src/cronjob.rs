//! The CronJob controller (upstream's `pkg/controller/cronjob`, the v2 controller of v1.33):
//! creates a Job named `<cronjob>-<scheduled time in minutes since the epoch>` for the most
//! recent unmet schedule time, honouring `suspend`, `startingDeadlineSeconds`,
//! `concurrencyPolicy` (Allow, Forbid, Replace) and `timeZone`; keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`; deletes finished Jobs beyond the history
//! limits; and requeues itself for the next schedule time (plus 100 ms, as upstream), so
//! nothing polls.
//!
//! Schedules are standard five-field cron expressions as robfig/cron's standard parser reads
//! them (names, ranges, steps, `?`, the `@yearly` … `@hourly` descriptors; day-of-month and
//! day-of-week combine with OR unless either is `*`), evaluated in `timeZone` or, without it,
//! the controller's local time zone, as upstream.
//!
//! Events (component `cronjob-controller`, upstream's reasons and messages):
//! `SuccessfulCreate` `Created job <job>`, `FailedCreate`, `SawCompletedJob` `Saw completed
//! job: <job>, condition: Complete|Failed`, `SuccessfulDelete` `Deleted job <job>` (Replace and
//! history limits), `FailedDelete`, `UnexpectedJob`, `MissingJob`, `MissSchedule` (RFC 1123
//! time in UTC), `TooManyMissedTimes`, `JobAlreadyActive`, `UnknownTimeZone`,
//! `UnparseableSchedule`, `InvalidSchedule`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use kube::Resource as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::ReconcileError;
use crate::events::EventType;
use crate::job::{finished_condition, is_finished};
use crate::replicaset::api_error_text;
use crate::util::{self, Backoff, Shared};

/// Annotation with a Job's scheduled time (RFC 3339, in the CronJob's time zone).
pub(crate) const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// The component name of this controller's events (upstream's `cronjob-controller`).
const COMPONENT: &str = "cronjob-controller";
/// Padding added to the requeue for the next schedule time (upstream `nextScheduleDelta`).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

struct Ctx {
    shared: Arc<Shared>,
    backoff: Backoff,
}

pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let controller = Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
    .graceful_shutdown_on(crate::stopped(stop.clone()));
    let abandon = util::abandon_unsynced(controller.store(), stop);
    let ctx = Arc::new(Ctx {
        shared,
        backoff: Backoff::default(),
    });
    util::drain(
        "cronjob",
        abandon,
        controller.run(
            |cj, ctx| async move {
                let key = util::key_of(cj.meta());
                let r = sync(&ctx.shared, &key).await;
                if r.is_ok() {
                    ctx.backoff.success(&key);
                }
                r
            },
            |cj, _e, ctx| util::error_action(&ctx.backoff, &util::key_of(cj.meta())),
            ctx,
        ),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Schedules

/// A parsed five-field cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// Day-of-month or day-of-week was `*`/`?`: the day fields combine with AND.
    day_star: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Bits of one field and whether it was a bare `*`/`?`.
fn parse_field(
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(u32::try_from(i).unwrap_or(0) + name_base);
        }
        s.parse::<u32>()
            .map_err(|_| format!("failed to parse int from {s}"))
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (part, None),
        };
        let (mut start, mut end, mut is_star) = if range == "*" || range == "?" {
            (min, max, true)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?, false)
        } else {
            let v = value(range)?;
            (v, v, false)
        };
        if let Some(step) = step {
            if step == 0 {
                return Err(format!("step of range should be a positive number: {part}"));
            }
            if !is_star && !range.contains('-') {
                // "N/step" means "N-max/step".
                end = max;
            }
            if step > 1 {
                is_star = false;
            }
            if start < min {
                return Err(format!(
                    "beginning of range ({start}) below minimum ({min}): {part}"
                ));
            }
            if end > max {
                return Err(format!(
                    "end of range ({end}) above maximum ({max}): {part}"
                ));
            }
            if start > end {
                return Err(format!(
                    "beginning of range ({start}) beyond end of range ({end}): {part}"
                ));
            }
            while start <= end {
                bits |= 1 << start;
                start += step;
            }
        } else {
            if start < min {
                return Err(format!(
                    "beginning of range ({start}) below minimum ({min}): {part}"
                ));
            }
            if end > max {
                return Err(format!(
                    "end of range ({end}) above maximum ({max}): {part}"
                ));
            }
            if start > end {
                return Err(format!(
                    "beginning of range ({start}) beyond end of range ({end}): {part}"
                ));
            }
            for i in start..=end {
                bits |= 1 << i;
            }
        }
        star |= is_star;
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a standard cron expression (robfig/cron `ParseStandard`).
    pub(crate) fn parse(expr: &str) -> Result<Schedule, String> {
        let expr = expr.trim();
        if expr.starts_with("TZ=") || expr.starts_with("CRON_TZ=") {
            return Err("TZ and CRON_TZ are not supported in the schedule; use timeZone".into());
        }
        let expanded = match expr {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            e if e.starts_with('@') => return Err(format!("unrecognized descriptor: {e}")),
            e => e,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {expr}",
                fields.len()
            ));
        }
        let (minutes, _) = parse_field(fields[0], 0, 59, &[], 0)?;
        let (hours, _) = parse_field(fields[1], 0, 23, &[], 0)?;
        let (dom, dom_star) = parse_field(fields[2], 1, 31, &[], 0)?;
        let (months, _) = parse_field(fields[3], 1, 12, MONTHS, 1)?;
        let (dow, dow_star) = parse_field(fields[4], 0, 6, DAYS, 0)?;
        Ok(Schedule {
            minutes,
            hours: u32::try_from(hours).unwrap_or(0),
            days_of_month: u32::try_from(dom).unwrap_or(0),
            months: u16::try_from(months).unwrap_or(0),
            days_of_week: u8::try_from(dow).unwrap_or(0),
            day_star: dom_star || dow_star,
        })
    }

    fn day_matches(&self, date: k8s_openapi::jiff::civil::Date) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first schedule time strictly after `t`, in `tz`; None within five years (an
    /// impossible date such as February 31st), as robfig/cron gives up.
    pub(crate) fn next(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut date = t.to_zoned(tz.clone()).date();
        for _ in 0..(366 * 5) {
            if self.months & (1 << date.month()) != 0 && self.day_matches(date) {
                for h in (0..24i8).filter(|h| self.hours & (1 << h) != 0) {
                    for m in (0..60i8).filter(|m| self.minutes & (1 << m) != 0) {
                        let Ok(z) = date.at(h, m, 0, 0).to_zoned(tz.clone()) else {
                            continue;
                        };
                        if z.timestamp() > t {
                            return Some(z.timestamp());
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// How many schedule times were missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missed {
    None,
    Few,
    Many,
}

/// Upstream's `mostRecentScheduleTime`: the earliest time considered (last schedule time or
/// creation, moved up to `now - startingDeadlineSeconds` when asked), the most recent schedule
/// time at or before `now` after it, and how many were missed.
pub(crate) fn most_recent_schedule_time(
    created: Timestamp,
    last_schedule: Option<Timestamp>,
    starting_deadline: Option<i64>,
    now: Timestamp,
    sched: &Schedule,
    tz: &TimeZone,
) -> Result<(Timestamp, Option<Timestamp>, Missed), String> {
    let mut earliest = last_schedule.unwrap_or(created);
    if let Some(sds) = starting_deadline {
        let deadline = now
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(sds))
            .unwrap_or(now);
        if deadline > earliest {
            earliest = deadline;
        }
    }
    let Some(t1) = sched.next(earliest, tz) else {
        return Ok((earliest, None, Missed::None));
    };
    if now < t1 {
        return Ok((earliest, None, Missed::None));
    }
    let Some(t2) = sched.next(t1, tz) else {
        return Ok((earliest, Some(t1), Missed::None));
    };
    if now < t2 {
        return Ok((earliest, Some(t1), Missed::None));
    }
    let between = t2.duration_since(t1).as_secs();
    if between < 1 {
        return Err("time difference between two schedules is less than 1 second".into());
    }
    let elapsed = now.duration_since(t1).as_secs();
    let missed = elapsed / between + 1;
    let start = t1
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            (missed - 2) * between,
        ))
        .unwrap_or(t1);
    let mut most_recent = None;
    let mut t = sched.next(start, tz);
    while let Some(x) = t {
        if x > now {
            break;
        }
        most_recent = Some(x);
        t = sched.next(x, tz);
    }
    let kind = if missed > 100 {
        Missed::Many
    } else {
        Missed::Few
    };
    Ok((earliest, most_recent, kind))
}

/// How long until the next schedule time after the most recent one (upstream
/// `nextScheduleTimeDuration`), plus 100 ms.
fn next_schedule_in(
    created: Timestamp,
    last_schedule: Option<Timestamp>,
    now: Timestamp,
    sched: &Schedule,
    tz: &TimeZone,
) -> Option<Duration> {
    let from = match most_recent_schedule_time(created, last_schedule, None, now, sched, tz) {
        Err(_) => now,
        Ok((_, Some(t), _)) => t,
        Ok((earliest, None, Missed::None)) => earliest,
        Ok((_, None, _)) => now,
    };
    let next = sched.next(from, tz)?;
    let d = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(d + NEXT_SCHEDULE_DELTA)
}

/// `timeZone`, or the controller's local zone without it.
fn schedule_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        Some(n) => TimeZone::get(n).map_err(|e| format!("unknown time zone {n:?}: {e}")),
        None => Ok(TimeZone::system()),
    }
}

/// `t` in RFC 3339 in `zone` (UTC without one), as Go's `time.RFC3339` prints it.
pub(crate) fn rfc3339_in(t: Timestamp, zone: Option<&str>) -> String {
    let tz = zone
        .and_then(|z| TimeZone::get(z).ok())
        .unwrap_or(TimeZone::UTC);
    let z = t.to_zoned(tz);
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// `<cronjob>-<scheduled time in minutes since the epoch>`.
pub(crate) fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

// ---------------------------------------------------------------------------------------------
// The sync

#[tracing::instrument(skip_all, fields(cronjob = %key))]
async fn sync(shared: &Shared, key: &str) -> Result<Action, ReconcileError> {
    let client = &shared.client;
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let Some(cj) = cronjobs.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let children: Vec<Job> = jobs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| util::controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let original = cj.status.clone().unwrap_or_default();
    let mut status = original.clone();
    let now = shared.clock.now();
    let action = sync_cronjob(shared, &cj, &mut status, &children, &jobs, now).await;
    cleanup_finished_jobs(shared, &cj, &mut status, &children, &jobs).await?;
    if status != original {
        write_status(&cronjobs, cj, status, &original).await?;
    }
    action
}

/// `PUT /status` guarded by the resourceVersion read. A conflict means the CronJob changed
/// since (spec, labels, annotations) — and a Job may already have been created on that read:
/// while nobody else changed the status, the status is written again on the fresh version
/// (a few times) rather than losing track of the Job.
async fn write_status(
    cronjobs: &Api<CronJob>,
    mut cj: CronJob,
    status: CronJobStatus,
    original: &CronJobStatus,
) -> Result<(), ReconcileError> {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone();
    let mut attempts = 0;
    loop {
        cj.status = Some(status.clone());
        match cronjobs
            .replace_status(&name, &PostParams::default(), &cj)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => {
                attempts += 1;
                let fresh = cronjobs.get(&name).await?;
                if fresh.metadata.uid != uid
                    || fresh.status.clone().unwrap_or_default() != *original
                {
                    return Err(kube::Error::Api(e).into());
                }
                cj = fresh;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn active_refs(status: &mut CronJobStatus) -> &mut Vec<ObjectReference> {
    status.active.get_or_insert_with(Vec::new)
}

fn remove_active(status: &mut CronJobStatus, uid: &str) {
    if let Some(a) = status.active.as_mut() {
        a.retain(|r| r.uid.as_deref() != Some(uid));
        if a.is_empty() {
            status.active = None;
        }
    }
}

/// Upstream's `syncCronJob`: reconcile the active list, then maybe start a Job.
async fn sync_cronjob(
    shared: &Shared,
    cj: &CronJob,
    status: &mut CronJobStatus,
    children: &[Job],
    jobs: &Api<Job>,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let event = |type_: EventType, reason: &str, message: String| {
        shared.events.event(COMPONENT, cj, type_, reason, message);
    };
    for j in children {
        let juid = j.metadata.uid.clone().unwrap_or_default();
        let in_active = status
            .active
            .iter()
            .flatten()
            .any(|r| r.uid.as_deref() == Some(juid.as_str()));
        let finished = is_finished(j);
        if !in_active && !finished {
            tracing::warn!(job = ?j.metadata.name, "saw a job that the controller did not create or forgot");
            event(
                EventType::Warning,
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    j.metadata.name.as_deref().unwrap_or("")
                ),
            );
        } else if in_active && finished {
            let cond = finished_condition(j).map(|c| c.type_.clone());
            tracing::info!(job = ?j.metadata.name, condition = ?cond, "saw completed job");
            event(
                EventType::Normal,
                "SawCompletedJob",
                format!(
                    "Saw completed job: {}, condition: {}",
                    j.metadata.name.as_deref().unwrap_or(""),
                    cond.as_deref().unwrap_or("")
                ),
            );
            remove_active(status, &juid);
        }
        if finished_condition(j).is_some_and(|c| c.type_ == "Complete")
            && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
            && status
                .last_successful_time
                .as_ref()
                .is_none_or(|t| done.0 > t.0)
        {
            status.last_successful_time = Some(done);
        }
    }
    // Active Jobs that no longer exist.
    let listed: Vec<&str> = children
        .iter()
        .filter_map(|j| j.metadata.uid.as_deref())
        .collect();
    let missing: Vec<ObjectReference> = status
        .active
        .iter()
        .flatten()
        .filter(|r| !listed.contains(&r.uid.as_deref().unwrap_or("")))
        .cloned()
        .collect();
    for r in missing {
        let jname = r.name.clone().unwrap_or_default();
        let exists = jobs
            .get_opt(&jname)
            .await?
            .is_some_and(|j| j.metadata.uid == r.uid);
        if !exists {
            tracing::info!(job = %jname, "active job went missing");
            event(
                EventType::Normal,
                "MissingJob",
                format!("Active job went missing: {jname}"),
            );
            remove_active(status, r.uid.as_deref().unwrap_or(""));
        }
    }

    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let tz = match schedule_zone(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            tracing::warn!(error = %e, "UnknownTimeZone; not scheduling");
            event(EventType::Warning, "UnknownTimeZone", {
                let tz = spec.time_zone.as_deref().unwrap_or("");
                format!("invalid timeZone: {tz:?}: unknown time zone {tz}")
            });
            return Ok(Action::await_change());
        }
    };
    if spec.suspend == Some(true) {
        return Ok(Action::await_change());
    }
    let sched = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(schedule = %spec.schedule, error = %e, "UnparseableSchedule; not scheduling");
            event(
                EventType::Warning,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            );
            return Ok(Action::await_change());
        }
    };
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let last = status.last_schedule_time.as_ref().map(|t| t.0);
    let requeue = || match next_schedule_in(created, last, now, &sched, &tz) {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    };
    let (_, most_recent, missed) = match most_recent_schedule_time(
        created,
        last,
        spec.starting_deadline_seconds,
        now,
        &sched,
        &tz,
    ) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "invalid schedule");
            event(
                EventType::Warning,
                "InvalidSchedule",
                format!("invalid schedule: {} : {e}", spec.schedule),
            );
            return Ok(Action::await_change());
        }
    };
    let Some(scheduled) = most_recent.filter(|t| *t <= now) else {
        return Ok(requeue());
    };
    if missed == Missed::Many {
        let msg = "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew";
        tracing::warn!("{msg}");
        event(EventType::Warning, "TooManyMissedTimes", msg.into());
    }
    if let Some(sds) = spec.starting_deadline_seconds {
        let late = Duration::try_from(now.duration_since(scheduled)).unwrap_or(Duration::ZERO);
        if late > Duration::from_secs(u64::try_from(sds.max(0)).unwrap_or(0)) {
            tracing::info!(%scheduled, "missed scheduled time to start a job");
            event(
                EventType::Warning,
                "MissSchedule",
                format!(
                    "Missed scheduled time to start a job: {}",
                    rfc1123z_utc(scheduled)
                ),
            );
            return Ok(requeue());
        }
    }
    let jname = job_name(&name, scheduled);
    let already = status
        .active
        .iter()
        .flatten()
        .any(|r| r.name.as_deref() == Some(jname.as_str()))
        || status
            .last_schedule_time
            .as_ref()
            .is_some_and(|t| t.0 == scheduled);
    if already {
        return Ok(requeue());
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && status.active.as_ref().is_some_and(|a| !a.is_empty()) {
        tracing::info!(
            "not starting job because prior execution is running and concurrency policy is Forbid"
        );
        event(
            EventType::Normal,
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid"
                .into(),
        );
        return Ok(requeue());
    }
    if policy == "Replace" {
        for r in status.active.clone().unwrap_or_default() {
            let rname = r.name.clone().unwrap_or_default();
            let Some(j) = jobs.get_opt(&rname).await? else {
                remove_active(status, r.uid.as_deref().unwrap_or(""));
                continue;
            };
            if j.metadata.uid != r.uid {
                remove_active(status, r.uid.as_deref().unwrap_or(""));
                continue;
            }
            delete_job(shared, cj, jobs, &rname).await?;
            tracing::info!(job = %rname, "deleted job (concurrency policy Replace)");
            remove_active(status, r.uid.as_deref().unwrap_or(""));
        }
    }
    let template = &spec.job_template;
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        rfc3339_in(scheduled, spec.time_zone.as_deref()),
    );
    let job = Job {
        metadata: ObjectMeta {
            name: Some(jname.clone()),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![util::controller_ref(cj)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    let created_job = match jobs.create(&PostParams::default(), &job).await {
        Ok(j) => j,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Created by an earlier sync whose status write was lost (then it is ours and
            // counts as this run), or by someone else (then upstream's answer: retry later).
            let existing = jobs.get_opt(&jname).await?;
            match existing {
                Some(j)
                    if util::controller_of(&j.metadata)
                        .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref()) =>
                {
                    tracing::info!(job = %jname, "job already exists; recording it");
                    j
                }
                _ => {
                    return Err(ReconcileError::Invalid(format!(
                        "job {jname} already exists"
                    )));
                }
            }
        }
        Err(e) => {
            event(
                EventType::Warning,
                "FailedCreate",
                format!("Error creating job: {}", api_error_text(&e)),
            );
            return Err(e.into());
        }
    };
    tracing::info!(job = %jname, %scheduled, "created job");
    event(
        EventType::Normal,
        "SuccessfulCreate",
        format!("Created job {jname}"),
    );
    active_refs(status).push(ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: created_job.metadata.name.clone(),
        namespace: created_job.metadata.namespace.clone(),
        uid: created_job.metadata.uid.clone(),
        resource_version: created_job.metadata.resource_version.clone(),
        field_path: None,
    });
    status.last_schedule_time = Some(Time(scheduled));
    let last = Some(scheduled);
    Ok(match next_schedule_in(created, last, now, &sched, &tz) {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Deletes a Job of `cj` (background propagation) and records it on the CronJob as
/// upstream's `deleteJob` does (`SuccessfulDelete` `Deleted job <name>`, `FailedDelete`).
async fn delete_job(
    shared: &Shared,
    cj: &CronJob,
    jobs: &Api<Job>,
    name: &str,
) -> Result<(), ReconcileError> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match jobs.delete(name, &dp).await {
        Ok(_) => {
            shared.events.event(
                COMPONENT,
                cj,
                EventType::Normal,
                "SuccessfulDelete",
                format!("Deleted job {name}"),
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => {
            shared.events.event(
                COMPONENT,
                cj,
                EventType::Warning,
                "FailedDelete",
                format!("Deleted job: {}", api_error_text(&e)),
            );
            Err(e.into())
        }
    }
}

/// `t` in UTC as Go's `time.RFC1123Z` prints it (`Mon, 02 Jan 2006 15:04:05 +0000`).
fn rfc1123z_utc(t: Timestamp) -> String {
    t.to_zoned(TimeZone::UTC)
        .strftime("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

/// Deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit` and
/// `failedJobsHistoryLimit` (upstream `cleanupFinishedJobs`), oldest start time first.
async fn cleanup_finished_jobs(
    shared: &Shared,
    cj: &CronJob,
    status: &mut CronJobStatus,
    children: &[Job],
    jobs: &Api<Job>,
) -> Result<(), ReconcileError> {
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(());
    };
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let mut of_kind: Vec<&Job> = children
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter(|j| finished_condition(j).is_some_and(|c| c.type_ == kind))
            .collect();
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        if of_kind.len() <= keep {
            continue;
        }
        of_kind.sort_by(|a, b| {
            let start = |j: &Job| j.status.as_ref().and_then(|s| s.start_time.clone());
            match (start(a), start(b)) {
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (x, y) if x == y => a.metadata.name.cmp(&b.metadata.name),
                (x, y) => x.map(|t| t.0).cmp(&y.map(|t| t.0)),
            }
        });
        let n = of_kind.len() - keep;
        for j in of_kind.into_iter().take(n) {
            let jname = j.metadata.name.clone().unwrap_or_default();
            delete_job(shared, cj, jobs, &jname).await?;
            tracing::info!(job = %jname, "deleted job beyond the history limit");
            remove_active(status, j.metadata.uid.as_deref().unwrap_or(""));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_standard_expressions_and_descriptors() {
        Schedule::parse("*/15 0-6,22 1,15 jan-MAR mon-fri").unwrap();
        assert_eq!(
            Schedule::parse("@hourly").unwrap(),
            Schedule::parse("0 * * * *").unwrap()
        );
        assert_eq!(
            Schedule::parse("@weekly").unwrap(),
            Schedule::parse("0 0 * * sun").unwrap()
        );
        for bad in [
            "* * * *",
            "60 * * * *",
            "* * * * 7",
            "*/0 * * * *",
            "@every 1h",
            "TZ=UTC * * * * *",
            "a * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_times_in_utc_and_in_a_zone() {
        let utc = TimeZone::UTC;
        let s = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            s.next(ts("2026-03-01T10:02:30Z"), &utc),
            Some(ts("2026-03-01T10:05:00Z"))
        );
        // Strictly after a schedule time.
        assert_eq!(
            s.next(ts("2026-03-01T10:05:00Z"), &utc),
            Some(ts("2026-03-01T10:10:00Z"))
        );
        // 09:00 in New York (UTC-5 in January).
        let ny = TimeZone::get("America/New_York").unwrap();
        let daily = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(
            daily.next(ts("2026-01-10T15:00:00Z"), &ny),
            Some(ts("2026-01-11T14:00:00Z"))
        );
        // Never: February 31st.
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next(ts("2026-01-01T00:00:00Z"), &utc),
            None
        );
    }

    #[test]
    fn day_of_month_and_week_combine_with_or_unless_one_is_a_star() {
        let utc = TimeZone::UTC;
        // The 13th or any Friday: 2026-03-06 is a Friday.
        let or = Schedule::parse("0 0 13 * fri").unwrap();
        assert_eq!(
            or.next(ts("2026-03-01T00:00:00Z"), &utc),
            Some(ts("2026-03-06T00:00:00Z"))
        );
        // Fridays only.
        let and = Schedule::parse("0 0 * * 5").unwrap();
        assert_eq!(
            and.next(ts("2026-03-07T00:00:00Z"), &utc),
            Some(ts("2026-03-13T00:00:00Z"))
        );
    }

    #[test]
    fn most_recent_schedule_time_finds_the_latest_missed_time() {
        let utc = TimeZone::UTC;
        let s = Schedule::parse("* * * * *").unwrap();
        let created = ts("2026-03-01T10:00:30Z");
        // Nothing due yet.
        let (_, t, m) =
            most_recent_schedule_time(created, None, None, ts("2026-03-01T10:00:50Z"), &s, &utc)
                .unwrap();
        assert_eq!((t, m), (None, Missed::None));
        // One due.
        let (_, t, _) =
            most_recent_schedule_time(created, None, None, ts("2026-03-01T10:01:10Z"), &s, &utc)
                .unwrap();
        assert_eq!(t, Some(ts("2026-03-01T10:01:00Z")));
        // Several missed: the latest, and "few".
        let (_, t, m) =
            most_recent_schedule_time(created, None, None, ts("2026-03-01T10:07:10Z"), &s, &utc)
                .unwrap();
        assert_eq!((t, m), (Some(ts("2026-03-01T10:07:00Z")), Missed::Few));
        // Many missed.
        let (_, _, m) =
            most_recent_schedule_time(created, None, None, ts("2026-03-02T10:07:10Z"), &s, &utc)
                .unwrap();
        assert_eq!(m, Missed::Many);
        // startingDeadlineSeconds moves the earliest time up.
        let (earliest, _, _) = most_recent_schedule_time(
            created,
            None,
            Some(60),
            ts("2026-03-02T10:07:10Z"),
            &s,
            &utc,
        )
        .unwrap();
        assert_eq!(earliest, ts("2026-03-02T10:06:10Z"));
        // The requeue aims at the next minute, plus 100 ms.
        let d = next_schedule_in(
            created,
            Some(ts("2026-03-01T10:07:00Z")),
            ts("2026-03-01T10:07:10Z"),
            &s,
            &utc,
        )
        .unwrap();
        assert_eq!(d, Duration::from_millis(50_100));
    }

    #[test]
    fn job_names_and_scheduled_timestamps() {
        let t = ts("2026-03-01T10:07:00Z");
        assert_eq!(
            job_name("backup", t),
            format!("backup-{}", t.as_second() / 60)
        );
        assert_eq!(rfc3339_in(t, None), "2026-03-01T10:07:00Z");
        assert_eq!(
            rfc3339_in(t, Some("Europe/Paris")),
            "2026-03-01T11:07:00+01:00"
        );
        assert_eq!(rfc1123z_utc(t), "Sun, 01 Mar 2026 10:07:00 +0000");
    }
}
