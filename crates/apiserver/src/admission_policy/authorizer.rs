//! The `authorizer` variable of admission policy expressions: upstream's CEL authz library
//! (`k8s.io/apiserver/pkg/cel/library/authz.go`) on rk3s's authorizer chain.
//!
//! - **Functions** (only in [`ENV`], the admission policies' environment; CRD rules do not
//!   have them): `authorizer.path(p)` (a non-resource path; blank: `path must not be empty`),
//!   `authorizer.group(g)` then `.resource(r)` (blank: `resource must not be empty`), and on
//!   that `.subresource(s)`, `.namespace(n)`, `.name(n)`, `.fieldSelector(s)`,
//!   `.labelSelector(s)`; `.check(verb)` on a path or resource check gives a decision with
//!   `allowed()` (only an allow is `true`: a deny and "no opinion" are `false`), `reason()`,
//!   `errored()` and `error()` (rk3s's authorizers never fail: `false` and `""`).
//!   `authorizer.serviceAccount(namespace, name)` is an authorizer checking as that service
//!   account (`system:serviceaccount:<ns>:<name>` in `system:serviceaccounts` and
//!   `system:serviceaccounts:<ns>`, as upstream's `ServiceAccountInfo.UserInfo()`; an
//!   invalid name or namespace: `Invalid service account name` / `... namespace`).
//!   `authorizer.requestResource` (a variable of that dotted name, as upstream declares it)
//!   is the resource check of the request itself: group and resource of the version the
//!   policy matched, subresource, namespace and name. A resource check asks for API version
//!   `*`; field and label selectors are kept but, as upstream's RBAC, no authorizer here
//!   looks at them.
//! - **Decisions** come from the chain every request goes through (`auth::authorize_with_reason`:
//!   `system:masters`, the node authorizer, RBAC), for the request's user.
//!
//! cel-rust functions are synchronous, and the node authorizer reads pods from the store.
//! So a [`Session`] (one per admitted request) answers what it can without I/O at once —
//! `system:masters`, and every user that is not a kubelet, from RBAC's in-memory cache (the
//! same answer `authorize_with_reason` gives them) — and records the others (a kubelet's
//! checks) as pending, answering them "not allowed" for now. The caller then runs the
//! pending checks through the async chain and evaluates again with the answers
//! ([`Session::resolve`]); an evaluation is a pure function of its inputs and the answers, so
//! the last one is what the full chain decides. Walking the AST beforehand was the
//! alternative; it only finds checks whose arguments are literals, while
//! `namespace(object.metadata.namespace)` is the common case.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use cel::common::types::{CelBool, CelString};
use cel::common::value::Val;
use cel::{DeclarationError, Env, ExecutionError};

use crate::auth::{Attributes, Auth, UserInfo, node};
use crate::crd::cel::opaque_val;
use crate::server::AppState;
use crate::validation::{NameRule, validate_name};

/// The environment admission policy expressions are compiled and run in: CRD rules'
/// ([`crate::crd::cel::ENV`]) with this library.
pub(crate) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = crate::crd::cel::environment();
    if let Err(e) = env.add_extension(register) {
        tracing::warn!(error = %e, "CEL authorizer library not loaded");
    }
    Arc::new(env)
});

/// The name of the request's own resource check.
pub(crate) const REQUEST_RESOURCE: &str = "authorizer.requestResource";

/// How often an evaluation is repeated with the answers to the checks it left pending.
const MAX_ROUNDS: usize = 16;

/// An authorizer's answer: upstream's `(decision, reason, err)`.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    allowed: bool,
    reason: String,
}

type Quick = dyn Fn(&Attributes) -> Option<Answer> + Send + Sync;

/// The authorization checks of one admitted request's expressions: the answers so far and
/// the checks still to run.
pub(crate) struct Session {
    /// The answer available without I/O, if any.
    quick: Box<Quick>,
    answers: Mutex<Vec<(Attributes, Answer)>>,
    pending: Mutex<Vec<Attributes>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// A session on the server's authorizer chain.
    pub(crate) fn new(state: &AppState) -> Arc<Session> {
        let auth = state.auth.clone();
        Session::with(move |a| quick(&auth, a))
    }

    fn with(quick: impl Fn(&Attributes) -> Option<Answer> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Session {
            quick: Box::new(quick),
            answers: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// The answer to `a`: known, available now, or "not allowed" and pending.
    fn decide(&self, a: Attributes) -> Answer {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, known)) = answers.iter().find(|(k, _)| *k == a) {
            return known.clone();
        }
        if let Some(answer) = (self.quick)(&a) {
            answers.push((a, answer.clone()));
            return answer;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if !pending.contains(&a) {
            pending.push(a);
        }
        Answer {
            allowed: false,
            reason: String::new(),
        }
    }

    /// Takes the checks the evaluations since the last call could not answer.
    fn take_pending(&self) -> Vec<Attributes> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn answer(&self, a: Attributes, answer: Answer) {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((a, answer));
    }

    /// Runs `evaluate` until every check it makes has the chain's answer: after each run,
    /// the checks it left pending are asked of `auth::authorize_with_reason` and it runs
    /// again (at most [`MAX_ROUNDS`] times). The last run's result is returned.
    pub(crate) async fn resolve<T>(&self, state: &AppState, evaluate: impl FnMut() -> T) -> T {
        let ask = |a: Attributes| async move {
            let (allowed, reason) = crate::auth::authorize_with_reason(state, &a).await;
            Answer { allowed, reason }
        };
        self.settle(ask, evaluate).await
    }

    /// [`Session::resolve`] with `ask` as the chain.
    async fn settle<T, F: Future<Output = Answer>>(
        &self,
        mut ask: impl FnMut(Attributes) -> F,
        mut evaluate: impl FnMut() -> T,
    ) -> T {
        let mut out = evaluate();
        for _ in 0..MAX_ROUNDS {
            let pending = self.take_pending();
            if pending.is_empty() {
                return out;
            }
            for a in pending {
                let answer = ask(a.clone()).await;
                self.answer(a, answer);
            }
            out = evaluate();
        }
        // Still asking new questions: the last run's "not allowed" answers stand.
        tracing::debug!("admission policy authorization checks did not settle");
        self.take_pending();
        out
    }
}

/// `auth::authorize_with_reason` where it needs no I/O: `system:masters`, and RBAC for every
/// user the node authorizer does not see (the node authorizer reads pods: `None`).
fn quick(auth: &Auth, a: &Attributes) -> Option<Answer> {
    if a.user.is_superuser() {
        return Some(Answer {
            allowed: true,
            reason: String::new(),
        });
    }
    if node::node_of(&a.user).is_some() {
        return None;
    }
    let reason = auth.rbac.reason(a);
    Some(Answer {
        allowed: reason.is_some(),
        reason: reason.unwrap_or_default(),
    })
}

/// The resource of a request, as `authorizer.requestResource` checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestResource {
    pub(crate) group: String,
    pub(crate) resource: String,
    pub(crate) subresource: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// The values an evaluation binds: `authorizer` and `authorizer.requestResource`.
pub(crate) fn variables(
    session: &Arc<Session>,
    user: &UserInfo,
    request: &RequestResource,
) -> [(&'static str, Box<dyn Val + 'static>); 2] {
    let authorizer = Authorizer {
        session: session.clone(),
        user: Arc::new(user.clone()),
    };
    let request = ResourceCheck {
        group: GroupCheck {
            authorizer: authorizer.clone(),
            group: request.group.clone(),
        },
        resource: request.resource.clone(),
        subresource: request.subresource.clone(),
        namespace: request.namespace.clone(),
        name: request.name.clone(),
        field_selector: String::new(),
        label_selector: String::new(),
    };
    [
        ("authorizer", Box::new(authorizer)),
        (REQUEST_RESOURCE, Box::new(request)),
    ]
}

// ---- the CEL types ---------------------------------------------------------------------

/// `kubernetes.authorization.Authorizer`: who the checks are made for.
#[derive(Debug, Clone)]
struct Authorizer {
    session: Arc<Session>,
    user: Arc<UserInfo>,
}

impl PartialEq for Authorizer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.session, &other.session) && self.user == other.user
    }
}
opaque_val!(
    Authorizer,
    AUTHORIZER_TYPE,
    "kubernetes.authorization.Authorizer"
);

#[derive(Debug, Clone, PartialEq)]
struct PathCheck {
    authorizer: Authorizer,
    path: String,
}
opaque_val!(
    PathCheck,
    PATH_CHECK_TYPE,
    "kubernetes.authorization.PathCheck"
);

#[derive(Debug, Clone, PartialEq)]
struct GroupCheck {
    authorizer: Authorizer,
    group: String,
}
opaque_val!(
    GroupCheck,
    GROUP_CHECK_TYPE,
    "kubernetes.authorization.GroupCheck"
);

#[derive(Debug, Clone, PartialEq)]
struct ResourceCheck {
    group: GroupCheck,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    field_selector: String,
    label_selector: String,
}
opaque_val!(
    ResourceCheck,
    RESOURCE_CHECK_TYPE,
    "kubernetes.authorization.ResourceCheck"
);

#[derive(Debug, Clone, PartialEq)]
struct Decision(Answer);
opaque_val!(Decision, DECISION_TYPE, "kubernetes.authorization.Decision");

// ---- the functions ---------------------------------------------------------------------

/// Registers the library on `env`.
fn register(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_member_overload!(env, fn authorizer_path: (Authorizer, CelString) -> Result<PathCheck>, name = "path")?;
    cel::add_member_overload!(env, fn authorizer_group: (Authorizer, CelString) -> GroupCheck, name = "group")?;
    cel::add_member_overload!(env, fn authorizer_service_account: (Authorizer, CelString, CelString) -> Result<Authorizer>, name = "serviceAccount")?;
    cel::add_member_overload!(env, fn group_resource: (GroupCheck, CelString) -> Result<ResourceCheck>, name = "resource")?;
    cel::add_member_overload!(env, fn resource_subresource: (ResourceCheck, CelString) -> ResourceCheck, name = "subresource")?;
    cel::add_member_overload!(env, fn resource_namespace: (ResourceCheck, CelString) -> ResourceCheck, name = "namespace")?;
    cel::add_member_overload!(env, fn resource_name: (ResourceCheck, CelString) -> ResourceCheck, name = "name")?;
    cel::add_member_overload!(env, fn resource_field_selector: (ResourceCheck, CelString) -> ResourceCheck, name = "fieldSelector")?;
    cel::add_member_overload!(env, fn resource_label_selector: (ResourceCheck, CelString) -> ResourceCheck, name = "labelSelector")?;
    cel::add_member_overload!(env, fn path_check: (PathCheck, CelString) -> Decision, name = "check")?;
    cel::add_member_overload!(env, fn resource_check: (ResourceCheck, CelString) -> Decision, name = "check")?;
    cel::add_member_overload!(env, fn decision_allowed: (Decision) -> CelBool, name = "allowed")?;
    cel::add_member_overload!(env, fn decision_reason: (Decision) -> CelString, name = "reason")?;
    cel::add_member_overload!(env, fn decision_errored: (Decision) -> CelBool, name = "errored")?;
    cel::add_member_overload!(env, fn decision_error: (Decision) -> CelString, name = "error")?;
    Ok(())
}

fn fail(function: &str, message: &str) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn authorizer_path(a: &Authorizer, path: &CelString<'_>) -> Result<PathCheck, ExecutionError> {
    if path.inner().trim().is_empty() {
        return Err(fail("path", "path must not be empty"));
    }
    Ok(PathCheck {
        authorizer: a.clone(),
        path: path.inner().to_string(),
    })
}

fn authorizer_group(a: &Authorizer, group: &CelString<'_>) -> GroupCheck {
    GroupCheck {
        authorizer: a.clone(),
        group: group.inner().to_string(),
    }
}

fn authorizer_service_account(
    a: &Authorizer,
    namespace: &CelString<'_>,
    name: &CelString<'_>,
) -> Result<Authorizer, ExecutionError> {
    let (namespace, name) = (namespace.inner(), name.inner());
    if !validate_name(NameRule::Subdomain, name).is_empty() {
        return Err(fail("serviceAccount", "Invalid service account name"));
    }
    if !validate_name(NameRule::Label, namespace).is_empty() {
        return Err(fail("serviceAccount", "Invalid service account namespace"));
    }
    let user = UserInfo::new(
        format!("system:serviceaccount:{namespace}:{name}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
        ],
    );
    Ok(Authorizer {
        session: a.session.clone(),
        user: Arc::new(user),
    })
}

fn group_resource(
    g: &GroupCheck,
    resource: &CelString<'_>,
) -> Result<ResourceCheck, ExecutionError> {
    if resource.inner().trim().is_empty() {
        return Err(fail("resource", "resource must not be empty"));
    }
    Ok(ResourceCheck {
        group: g.clone(),
        resource: resource.inner().to_string(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        field_selector: String::new(),
        label_selector: String::new(),
    })
}

fn resource_with(r: &ResourceCheck, set: impl FnOnce(&mut ResourceCheck)) -> ResourceCheck {
    let mut r = r.clone();
    set(&mut r);
    r
}

fn resource_subresource(r: &ResourceCheck, s: &CelString<'_>) -> ResourceCheck {
    resource_with(r, |r| r.subresource = s.inner().to_string())
}

fn resource_namespace(r: &ResourceCheck, s: &CelString<'_>) -> ResourceCheck {
    resource_with(r, |r| r.namespace = s.inner().to_string())
}

fn resource_name(r: &ResourceCheck, s: &CelString<'_>) -> ResourceCheck {
    resource_with(r, |r| r.name = s.inner().to_string())
}

fn resource_field_selector(r: &ResourceCheck, s: &CelString<'_>) -> ResourceCheck {
    resource_with(r, |r| r.field_selector = s.inner().to_string())
}

fn resource_label_selector(r: &ResourceCheck, s: &CelString<'_>) -> ResourceCheck {
    resource_with(r, |r| r.label_selector = s.inner().to_string())
}

fn path_check(p: &PathCheck, verb: &CelString<'_>) -> Decision {
    let a = Attributes::non_resource(
        (*p.authorizer.user).clone(),
        verb.inner().to_string(),
        p.path.clone(),
    );
    Decision(p.authorizer.session.decide(a))
}

fn resource_check(r: &ResourceCheck, verb: &CelString<'_>) -> Decision {
    let authorizer = &r.group.authorizer;
    let a = Attributes {
        user: (*authorizer.user).clone(),
        verb: verb.inner().to_string(),
        resource_request: true,
        api_group: r.group.group.clone(),
        api_version: "*".into(),
        namespace: r.namespace.clone(),
        resource: r.resource.clone(),
        subresource: r.subresource.clone(),
        name: r.name.clone(),
        path: String::new(),
    };
    Decision(authorizer.session.decide(a))
}

fn decision_allowed(d: &Decision) -> CelBool {
    d.0.allowed.into()
}

fn decision_reason(d: &Decision) -> CelString<'static> {
    CelString::from(d.0.reason.clone())
}

fn decision_errored(_: &Decision) -> CelBool {
    false.into()
}

fn decision_error(_: &Decision) -> CelString<'static> {
    CelString::from(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cel::{Context, Value as Cel};

    /// A session whose chain allows `alice` to get secrets in `ns1` only, `system:masters`
    /// everything, the service account `ns1/robot` to list pods, and leaves `system:node:*`
    /// users pending (allowed to get `/healthz`).
    fn session() -> Arc<Session> {
        Session::with(|a| {
            if a.user.is_superuser() {
                return Some(Answer {
                    allowed: true,
                    reason: String::new(),
                });
            }
            if a.user.name.starts_with("system:node:") {
                return None;
            }
            let allowed = match a.user.name.as_str() {
                "alice" => {
                    a.resource_request
                        && a.api_group.is_empty()
                        && a.resource == "secrets"
                        && a.namespace == "ns1"
                        && a.verb == "get"
                        && a.api_version == "*"
                }
                "system:serviceaccount:ns1:robot" => {
                    a.resource == "pods"
                        && a.verb == "list"
                        && a.user.groups == ["system:serviceaccounts", "system:serviceaccounts:ns1"]
                }
                _ => false,
            };
            Some(Answer {
                allowed,
                reason: if allowed {
                    format!("allowed {}", a.user.name)
                } else {
                    String::new()
                },
            })
        })
    }

    fn eval(
        session: &Arc<Session>,
        user: &str,
        request: &RequestResource,
        source: &str,
    ) -> Result<Cel, String> {
        let program = ENV.compile(source).map_err(|e| e.to_string())?;
        let mut ctx = Context::with_env(ENV.clone());
        let user = UserInfo::new(user, vec!["system:authenticated".into()]);
        for (name, value) in variables(session, &user, request) {
            ctx.add_variable_as_val(name, value);
        }
        program.execute(&ctx).map_err(|e| match e {
            ExecutionError::FunctionError { message, .. } => message,
            other => other.to_string(),
        })
    }

    fn check(user: &str, source: &str) -> Result<Cel, String> {
        eval(&session(), user, &RequestResource::default(), source)
    }

    #[test]
    fn resource_checks_ask_the_chain_for_the_request_user() {
        let e = "authorizer.group('').resource('secrets').namespace('ns1').check('get').allowed()";
        assert_eq!(check("alice", e), Ok(Cel::Bool(true)));
        assert_eq!(check("bob", e), Ok(Cel::Bool(false)));
        let other_ns =
            "authorizer.group('').resource('secrets').namespace('ns2').check('get').allowed()";
        assert_eq!(check("alice", other_ns), Ok(Cel::Bool(false)));
        let reason =
            "authorizer.group('').resource('secrets').namespace('ns1').check('get').reason()";
        assert_eq!(
            check("alice", reason),
            Ok(Cel::String("allowed alice".to_string().into()))
        );
        assert_eq!(check("bob", reason), Ok(Cel::String(String::new().into())));
        let errored = "authorizer.group('').resource('secrets').check('get').errored() || \
                       authorizer.group('').resource('secrets').check('get').error() != ''";
        assert_eq!(check("bob", errored), Ok(Cel::Bool(false)));
    }

    #[test]
    fn request_resource_is_the_requests_own_check() {
        let request = RequestResource {
            resource: "secrets".into(),
            namespace: "ns1".into(),
            name: "s".into(),
            ..RequestResource::default()
        };
        let e = "authorizer.requestResource.check('get').allowed()";
        assert_eq!(eval(&session(), "alice", &request, e), Ok(Cel::Bool(true)));
        assert_eq!(
            eval(
                &session(),
                "alice",
                &request,
                "authorizer.requestResource.namespace('x').check('get').allowed()"
            ),
            Ok(Cel::Bool(false))
        );
    }

    #[test]
    fn service_account_checks_run_as_the_account() {
        let e = "authorizer.serviceAccount('ns1', 'robot').group('').resource('pods').check('list').allowed()";
        assert_eq!(check("bob", e), Ok(Cel::Bool(true)));
        let e = "authorizer.serviceAccount('ns1', 'other').group('').resource('pods').check('list').allowed()";
        assert_eq!(check("bob", e), Ok(Cel::Bool(false)));
        assert_eq!(
            check(
                "bob",
                "authorizer.serviceAccount('ns1', 'Bad_Name').group('').resource('pods').check('list').allowed()"
            ),
            Err("Invalid service account name".into())
        );
        assert_eq!(
            check(
                "bob",
                "authorizer.serviceAccount('not.a.label', 'robot').group('').resource('pods').check('list').allowed()"
            ),
            Err("Invalid service account namespace".into())
        );
    }

    #[test]
    fn blank_paths_and_resources_are_errors() {
        assert_eq!(
            check("bob", "authorizer.path(' ').check('get').allowed()"),
            Err("path must not be empty".into())
        );
        assert_eq!(
            check(
                "bob",
                "authorizer.group('apps').resource('').check('get').allowed()"
            ),
            Err("resource must not be empty".into())
        );
        // Other checks are made as written: a subresource, a name, selectors.
        assert_eq!(
            check(
                "bob",
                "authorizer.group('apps').resource('deployments').subresource('scale').name('x').fieldSelector('a=b').labelSelector('c').check('update').allowed()"
            ),
            Ok(Cel::Bool(false))
        );
    }

    #[test]
    fn checks_the_chain_cannot_answer_at_once_are_pending_until_answered() {
        let s = session();
        let e = "authorizer.path('/healthz').check('get').allowed()";
        let node = "system:node:n1";
        assert_eq!(
            eval(&s, node, &RequestResource::default(), e),
            Ok(Cel::Bool(false))
        );
        let pending = s.take_pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].path, "/healthz");
        assert_eq!(pending[0].user.name, node);
        assert!(!pending[0].resource_request);
        s.answer(
            pending[0].clone(),
            Answer {
                allowed: true,
                reason: String::new(),
            },
        );
        assert_eq!(
            eval(&s, node, &RequestResource::default(), e),
            Ok(Cel::Bool(true))
        );
        assert!(s.take_pending().is_empty());
    }

    #[tokio::test]
    async fn pending_checks_are_asked_until_the_evaluation_settles() {
        let s = session();
        // The second check is made only when the first is allowed: two rounds of questions.
        let e = "authorizer.path('/healthz').check('get').allowed() && \
                 authorizer.group('').resource('pods').check('list').allowed()";
        let asked = Mutex::new(Vec::new());
        let ask = |a: Attributes| {
            asked.lock().expect("asked").push(a);
            std::future::ready(Answer {
                allowed: true,
                reason: "node".into(),
            })
        };
        let result = s
            .settle(ask, || {
                eval(&s, "system:node:n1", &RequestResource::default(), e)
            })
            .await;
        let asked = asked.into_inner().expect("asked");
        assert_eq!(result, Ok(Cel::Bool(true)));
        let asked: Vec<(&str, &str)> = asked
            .iter()
            .map(|a| (a.path.as_str(), a.resource.as_str()))
            .collect();
        assert_eq!(asked, [("/healthz", ""), ("", "pods")]);
    }

    #[test]
    fn crd_rules_do_not_have_the_library() {
        let user = UserInfo::new("alice", vec!["system:masters".into()]);
        let run = |env: &Arc<Env>| {
            let program = env
                .compile("x.group('').resource('pods').check('get').allowed()")
                .expect("parses");
            let mut ctx = Context::with_env(env.clone());
            let [(_, authorizer), _] = variables(&session(), &user, &RequestResource::default());
            ctx.add_variable_as_val("x", authorizer);
            program.execute(&ctx)
        };
        assert_eq!(run(&ENV), Ok(Cel::Bool(true)));
        assert!(run(&crate::crd::cel::ENV).is_err());
    }
}
