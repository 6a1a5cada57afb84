//! The RBAC authorizer: Roles, ClusterRoles, RoleBindings and ClusterRoleBindings, kept in a
//! cache filled by a list and then a watch of the store (as upstream's informers do; a change
//! is seen within milliseconds, not synchronously). Also: aggregated ClusterRoles (their rules
//! are kept filled in by a loop here until the controller-manager exists), the bootstrap
//! policy reconciled at start ([`super::policy`]), and escalation prevention on writes of roles
//! and bindings.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef,
    Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use rk3s_datastore::{EventKind, ListOptions, WatchResponse};

use crate::storage::Store;
use serde_json::{Value, json};

use super::{Attributes, UserInfo};
use crate::error::{Error, Result};
use crate::registry::{REGISTRY, ResourceInfo};
use crate::server::AppState;
use crate::status::ApiError;

pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";

/// The RBAC objects, by storage key.
#[derive(Debug, Default)]
struct Policy {
    cluster_roles: BTreeMap<String, ClusterRole>,
    roles: BTreeMap<(String, String), Role>,
    cluster_role_bindings: BTreeMap<String, ClusterRoleBinding>,
    role_bindings: BTreeMap<(String, String), RoleBinding>,
}

/// The authorizer's view of the RBAC objects.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    store: Store,
    policy: Arc<RwLock<Policy>>,
}

/// Which of the four kinds a storage key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterRole,
    Role,
    ClusterRoleBinding,
    RoleBinding,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::ClusterRole,
        Kind::Role,
        Kind::ClusterRoleBinding,
        Kind::RoleBinding,
    ];

    fn plural(self) -> &'static str {
        match self {
            Kind::ClusterRole => "clusterroles",
            Kind::Role => "roles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::RoleBinding => "rolebindings",
        }
    }

    fn info(self) -> Result<&'static ResourceInfo> {
        rbac_info(self.plural()).ok_or_else(|| Error::Bootstrap("RBAC is not registered".into()))
    }
}

pub(crate) fn rbac_info(plural: &str) -> Option<&'static ResourceInfo> {
    REGISTRY.find(GROUP, "v1", plural)
}

fn ns_name(v: &Value) -> (String, String) {
    let m = &v["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_string(),
        m["name"].as_str().unwrap_or("").to_string(),
    )
}

impl Policy {
    fn put(&mut self, kind: Kind, value: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(value) else {
            return;
        };
        let (ns, name) = ns_name(&v);
        let parsed = match kind {
            Kind::ClusterRole => serde_json::from_value(v).map(|o| {
                self.cluster_roles.insert(name, o);
            }),
            Kind::Role => serde_json::from_value(v).map(|o| {
                self.roles.insert((ns, name), o);
            }),
            Kind::ClusterRoleBinding => serde_json::from_value(v).map(|o| {
                self.cluster_role_bindings.insert(name, o);
            }),
            Kind::RoleBinding => serde_json::from_value(v).map(|o| {
                self.role_bindings.insert((ns, name), o);
            }),
        };
        if let Err(e) = parsed {
            tracing::warn!(error = %e, kind = kind.plural(), "unreadable RBAC object ignored");
        }
    }

    /// Deletes by storage key: `/registry/<plural>/[<ns>/]<name>`.
    fn delete(&mut self, kind: Kind, key: &str, prefix: &str) {
        let rest = key.strip_prefix(prefix).unwrap_or(key);
        let (ns, name) = match rest.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (String::new(), rest.to_string()),
        };
        match kind {
            Kind::ClusterRole => {
                self.cluster_roles.remove(&name);
            }
            Kind::Role => {
                self.roles.remove(&(ns, name));
            }
            Kind::ClusterRoleBinding => {
                self.cluster_role_bindings.remove(&name);
            }
            Kind::RoleBinding => {
                self.role_bindings.remove(&(ns, name));
            }
        }
    }

    fn role_ref_rules(&self, namespace: &str, r: &RoleRef) -> Option<&[PolicyRule]> {
        let rules = match r.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&r.name)?.rules.as_deref(),
            "Role" if !namespace.is_empty() => self
                .roles
                .get(&(namespace.to_string(), r.name.clone()))?
                .rules
                .as_deref(),
            _ => None,
        };
        Some(rules.unwrap_or(&[]))
    }

    /// Calls `f` with every rule that applies to `user` in `namespace` (cluster-wide ones
    /// first); stops when `f` returns true.
    fn visit_rules(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut f: impl FnMut(&PolicyRule) -> bool,
    ) -> bool {
        for b in self.cluster_role_bindings.values() {
            if applies(b.subjects.as_deref(), user, "")
                && let Some(rules) = self.role_ref_rules("", &b.role_ref)
                && rules.iter().any(&mut f)
            {
                return true;
            }
        }
        if namespace.is_empty() {
            return false;
        }
        let from = (namespace.to_string(), String::new());
        for ((ns, _), b) in self.role_bindings.range(from..) {
            if ns != namespace {
                break;
            }
            if applies(b.subjects.as_deref(), user, namespace)
                && let Some(rules) = self.role_ref_rules(namespace, &b.role_ref)
                && rules.iter().any(&mut f)
            {
                return true;
            }
        }
        false
    }

    fn allows(&self, a: &Attributes) -> bool {
        self.visit_rules(&a.user, &a.namespace, |r| rule_allows(r, a))
    }

    /// What allows `a`, worded as upstream's RBAC authorizer gives its reason: `RBAC: allowed
    /// by ClusterRoleBinding "b" of ClusterRole "r" to User "u"` (a RoleBinding is named
    /// `name/namespace`, a service account `name/namespace`). Bindings are tried in the order
    /// [`Policy::allows`] tries them.
    fn allowed_by(&self, a: &Attributes) -> Option<String> {
        let describe = |subject: &Subject, binding_ns: &str| match subject.kind.as_str() {
            "ServiceAccount" => {
                let ns = match subject.namespace.as_deref() {
                    Some(ns) if !ns.is_empty() => ns,
                    _ => binding_ns,
                };
                format!("ServiceAccount {:?}", format!("{}/{ns}", subject.name))
            }
            kind => format!("{kind} {:?}", subject.name),
        };
        for (name, b) in &self.cluster_role_bindings {
            if let Some(subject) = applying_subject(b.subjects.as_deref(), &a.user, "")
                && let Some(rules) = self.role_ref_rules("", &b.role_ref)
                && rules.iter().any(|r| rule_allows(r, a))
            {
                return Some(format!(
                    "RBAC: allowed by ClusterRoleBinding {name:?} of {} {:?} to {}",
                    b.role_ref.kind,
                    b.role_ref.name,
                    describe(subject, "")
                ));
            }
        }
        if a.namespace.is_empty() {
            return None;
        }
        let from = (a.namespace.clone(), String::new());
        for ((ns, name), b) in self.role_bindings.range(from..) {
            if *ns != a.namespace {
                break;
            }
            if let Some(subject) = applying_subject(b.subjects.as_deref(), &a.user, ns)
                && let Some(rules) = self.role_ref_rules(ns, &b.role_ref)
                && rules.iter().any(|r| rule_allows(r, a))
            {
                return Some(format!(
                    "RBAC: allowed by RoleBinding {:?} of {} {:?} to {}",
                    format!("{name}/{ns}"),
                    b.role_ref.kind,
                    b.role_ref.name,
                    describe(subject, ns)
                ));
            }
        }
        None
    }

    /// Every rule `user` holds in `namespace`.
    fn rules_of(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut rules = Vec::new();
        self.visit_rules(user, namespace, |r| {
            rules.push(r.clone());
            false
        });
        rules
    }
}

/// Whether a binding's subjects include `user` (upstream's `appliesToUser`).
fn applies(subjects: Option<&[Subject]>, user: &UserInfo, binding_ns: &str) -> bool {
    applying_subject(subjects, user, binding_ns).is_some()
}

/// The first of a binding's subjects that is `user` (upstream's `appliesTo`).
fn applying_subject<'s>(
    subjects: Option<&'s [Subject]>,
    user: &UserInfo,
    binding_ns: &str,
) -> Option<&'s Subject> {
    subjects
        .unwrap_or(&[])
        .iter()
        .find(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.contains(&s.name),
            "ServiceAccount" => {
                let ns = match s.namespace.as_deref() {
                    Some(ns) if !ns.is_empty() => ns,
                    _ => binding_ns,
                };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", s.name)
            }
            _ => false,
        })
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether `rule` allows the request (upstream's `RuleAllows`).
pub(crate) fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule
            .non_resource_urls
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|u| url_matches(u, &a.path));
    }
    let groups = rule.api_groups.as_deref().unwrap_or(&[]);
    if !has(groups, &a.api_group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resources = rule.resources.as_deref().unwrap_or(&[]);
    let resource_ok = resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names = rule.resource_names.as_deref().unwrap_or(&[]);
    names.is_empty() || names.contains(&a.name)
}

fn url_matches(rule_url: &str, path: &str) -> bool {
    rule_url == "*"
        || rule_url == path
        || rule_url
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

impl Cache {
    pub(crate) fn new(store: Store) -> Self {
        Cache {
            store,
            policy: Arc::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Policy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether RBAC (or membership of `system:masters`) allows `a`. The whole chain, with the
    /// node authorizer, is `auth::authorize`.
    pub(crate) fn allows(&self, a: &Attributes) -> bool {
        a.user.is_superuser() || self.read().allows(a)
    }

    /// RBAC's reason for allowing `a` (see [`Policy::allowed_by`]); `None` when RBAC does
    /// not allow it (or for `system:masters`, which upstream allows without a reason).
    pub(crate) fn reason(&self, a: &Attributes) -> Option<String> {
        if a.user.is_superuser() {
            return None;
        }
        self.read().allowed_by(a)
    }

    /// Whether the rules of the ClusterRole `name` allow `a` (for the node authorizer).
    pub(crate) fn cluster_role_allows(&self, name: &str, a: &Attributes) -> bool {
        self.read()
            .cluster_roles
            .get(name)
            .is_some_and(|cr| cr.rules.iter().flatten().any(|r| rule_allows(r, a)))
    }

    /// Every rule `user` holds in `namespace` (cluster-wide rules included).
    pub(crate) fn rules_of(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        if user.is_superuser() {
            return vec![
                PolicyRule {
                    api_groups: Some(vec!["*".into()]),
                    resources: Some(vec!["*".into()]),
                    verbs: vec!["*".into()],
                    ..PolicyRule::default()
                },
                PolicyRule {
                    non_resource_urls: Some(vec!["*".into()]),
                    verbs: vec!["*".into()],
                    ..PolicyRule::default()
                },
            ];
        }
        self.read().rules_of(user, namespace)
    }

    /// Loads every RBAC object, then keeps the cache current from watches until shutdown.
    async fn fill_and_watch(&self, state: &AppState) -> Result<()> {
        for kind in Kind::ALL {
            let info = kind.info()?;
            let prefix = info.prefix(None);
            let list = self
                .store
                .list(&prefix, ListOptions::default())
                .await
                .map_err(Error::from)?;
            {
                let mut p = self.policy.write().unwrap_or_else(|e| e.into_inner());
                for kv in &list.kvs {
                    p.put(kind, &kv.value);
                }
            }
            let cache = self.clone();
            let state = state.clone();
            tokio::spawn(async move {
                cache.watch(state, kind, prefix, list.revision + 1).await;
            });
        }
        Ok(())
    }

    async fn watch(&self, state: AppState, kind: Kind, prefix: Vec<u8>, mut from: i64) {
        let mut shutdown = state.shutdown.clone();
        let prefix_str = String::from_utf8_lossy(&prefix).into_owned();
        loop {
            let mut watch = match self.store.watch_prefix(&prefix, from, false).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, kind = kind.plural(), "RBAC watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.changed() => return,
                    n = watch.next() => n,
                };
                match next {
                    Some(Ok(WatchResponse::Events { revision, events })) => {
                        {
                            let mut p = self.policy.write().unwrap_or_else(|e| e.into_inner());
                            for ev in &events {
                                match ev.kind {
                                    EventKind::Put => p.put(kind, &ev.kv.value),
                                    EventKind::Delete => p.delete(
                                        kind,
                                        &String::from_utf8_lossy(&ev.kv.key),
                                        &prefix_str,
                                    ),
                                }
                            }
                        }
                        from = revision + 1;
                        if kind == Kind::ClusterRole {
                            aggregate(&state, self).await;
                        }
                    }
                    Some(Ok(WatchResponse::Progress { revision })) => from = revision + 1,
                    Some(Ok(WatchResponse::Compacted { .. })) | Some(Err(_)) | None => break,
                }
            }
            // The watch ended (compaction, error): read everything again.
            if let Ok(list) = self.store.list(&prefix, ListOptions::default()).await {
                let mut p = self.policy.write().unwrap_or_else(|e| e.into_inner());
                match kind {
                    Kind::ClusterRole => p.cluster_roles.clear(),
                    Kind::Role => p.roles.clear(),
                    Kind::ClusterRoleBinding => p.cluster_role_bindings.clear(),
                    Kind::RoleBinding => p.role_bindings.clear(),
                }
                for kv in &list.kvs {
                    p.put(kind, &kv.value);
                }
                from = list.revision + 1;
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// Reconciles the bootstrap policy, fills the cache and starts its watches, and fills in the
/// aggregated ClusterRoles once.
pub(crate) async fn start(state: &AppState) -> Result<()> {
    super::policy::reconcile(state).await?;
    state.auth.rbac.fill_and_watch(state).await?;
    aggregate(state, &state.auth.rbac).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// aggregation

fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

/// The rules an aggregated ClusterRole should have: those of every ClusterRole any of its
/// selectors matches, without duplicates, in name order.
fn aggregated_rules(p: &Policy, name: &str, rule: &AggregationRule) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    for (other, cr) in &p.cluster_roles {
        if other == name {
            continue;
        }
        let labels = cr.metadata.labels.clone().unwrap_or_default();
        let selected = rule
            .cluster_role_selectors
            .iter()
            .flatten()
            .any(|s| !is_empty_selector(s) && selector_matches(s, &labels));
        if selected {
            for r in cr.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    rules
}

fn is_empty_selector(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// Writes the rules of every aggregated ClusterRole whose rules are out of date (the work of
/// upstream's clusterrole-aggregation controller).
async fn aggregate(state: &AppState, cache: &Cache) {
    let due: Vec<(String, Vec<PolicyRule>)> = {
        let p = cache.read();
        p.cluster_roles
            .iter()
            .filter_map(|(name, cr)| {
                let rule = cr.aggregation_rule.as_ref()?;
                let want = aggregated_rules(&p, name, rule);
                (cr.rules.as_deref().unwrap_or(&[]) != want.as_slice())
                    .then(|| (name.clone(), want))
            })
            .collect()
    };
    let Some(info) = rbac_info("clusterroles") else {
        return;
    };
    for (name, rules) in due {
        let key = info.key(None, &name);
        let rules = json!(rules);
        let res = crate::rest::guaranteed_update(state, info, &key, &name, false, |old| {
            let mut new = old.clone();
            new["rules"] = rules.clone();
            Ok(new)
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(clusterrole = name, error = %e.message, "aggregation failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// escalation prevention

/// One permission: what `covers` breaks rules into.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    Resource {
        verb: String,
        group: String,
        resource: String,
        name: Option<String>,
    },
    Url {
        verb: String,
        url: String,
    },
}

fn atoms(rule: &PolicyRule) -> Vec<Atom> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let names = rule.resource_names.as_deref().unwrap_or(&[]);
                if names.is_empty() {
                    out.push(Atom::Resource {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        name: None,
                    });
                }
                for n in names {
                    out.push(Atom::Resource {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        name: Some(n.clone()),
                    });
                }
            }
        }
        for url in rule.non_resource_urls.iter().flatten() {
            out.push(Atom::Url {
                verb: verb.clone(),
                url: url.clone(),
            });
        }
    }
    out
}

fn atom_covered(owner: &PolicyRule, atom: &Atom) -> bool {
    match atom {
        Atom::Resource {
            verb,
            group,
            resource,
            name,
        } => {
            has(&owner.verbs, verb)
                && has(owner.api_groups.as_deref().unwrap_or(&[]), group)
                && owner.resources.iter().flatten().any(|r| {
                    r == "*"
                        || r == resource
                        || resource
                            .split_once('/')
                            .is_some_and(|(_, sub)| *r == format!("*/{sub}"))
                })
                && match owner.resource_names.as_deref().unwrap_or(&[]) {
                    [] => true,
                    names => name.as_ref().is_some_and(|n| names.contains(n)),
                }
        }
        Atom::Url { verb, url } => {
            has(&owner.verbs, verb)
                && owner.non_resource_urls.iter().flatten().any(|u| {
                    u == "*" || u == url || u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
                })
        }
    }
}

/// The rules of `wanted` that `owned` does not cover, one per missing permission.
pub(crate) fn uncovered(owned: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<String> {
    let mut missing = Vec::new();
    for rule in wanted {
        for atom in atoms(rule) {
            if !owned.iter().any(|o| atom_covered(o, &atom)) {
                missing.push(match atom {
                    Atom::Resource {
                        verb,
                        group,
                        resource,
                        name,
                    } => match name {
                        Some(n) => format!(
                            "{{APIGroups:[\"{group}\"], Resources:[\"{resource}\"], ResourceNames:[\"{n}\"], Verbs:[\"{verb}\"]}}"
                        ),
                        None => format!(
                            "{{APIGroups:[\"{group}\"], Resources:[\"{resource}\"], Verbs:[\"{verb}\"]}}"
                        ),
                    },
                    Atom::Url { verb, url } => {
                        format!("{{NonResourceURLs:[\"{url}\"], Verbs:[\"{verb}\"]}}")
                    }
                });
            }
        }
    }
    missing
}

/// Refuses a write of a role or binding that would grant `user` more than it holds, unless it
/// may `escalate` (roles) or `bind` (bindings), as upstream's RBAC storage does.
pub(crate) fn check_escalation(
    cache: &Cache,
    user: &UserInfo,
    plural: &str,
    namespace: &str,
    obj: &Value,
) -> std::result::Result<(), ApiError> {
    if user.is_superuser() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let info = rbac_info(plural).ok_or_else(|| ApiError::internal("RBAC is not registered"))?;
    let ask = |verb: &str, resource: &str, res_name: &str| {
        cache.allows(&Attributes::resource(
            user.clone(),
            verb,
            GROUP,
            resource,
            "",
            namespace,
            res_name,
        ))
    };
    let wanted: Vec<PolicyRule> = match plural {
        "roles" | "clusterroles" => {
            if ask("escalate", plural, &name) {
                return Ok(());
            }
            if plural == "clusterroles" && obj.get("aggregationRule").is_some_and(|a| !a.is_null())
            {
                return Err(ApiError::forbidden(
                    info,
                    &name,
                    &format!(
                        "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held: must have cluster-admin privileges to use the aggregationRule",
                        user.name, user.groups
                    ),
                ));
            }
            serde_json::from_value(obj["rules"].clone()).unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref: RoleRef = serde_json::from_value(obj["roleRef"].clone())
                .map_err(|e| ApiError::bad_request(format!("invalid roleRef: {e}")))?;
            let ref_plural = if role_ref.kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if ask("bind", ref_plural, &role_ref.name) {
                return Ok(());
            }
            let p = cache.read();
            match p.role_ref_rules(namespace, &role_ref) {
                Some(rules) => rules.to_vec(),
                None => {
                    return Err(ApiError::forbidden(
                        info,
                        &name,
                        &format!(
                            "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held: {} {:?} not found",
                            user.name, user.groups, role_ref.kind, role_ref.name
                        ),
                    ));
                }
            }
        }
        _ => return Ok(()),
    };
    let owned = cache.rules_of(user, namespace);
    let missing = uncovered(&owned, &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::forbidden(
        info,
        &name,
        &format!(
            "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            missing.join("\n")
        ),
    ))
}

/// For SelfSubjectRulesReview: `(resourceRules, nonResourceRules)` of `user` in `namespace`.
pub(crate) fn rules_review(cache: &Cache, user: &UserInfo, namespace: &str) -> (Value, Value) {
    let rules = cache.rules_of(user, namespace);
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for r in rules {
        if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            non_resource.push(json!({ "verbs": r.verbs, "nonResourceURLs": r.non_resource_urls }));
        }
        if r.resources.as_ref().is_some_and(|u| !u.is_empty()) {
            let mut v = json!({
                "verbs": r.verbs,
                "apiGroups": r.api_groups.clone().unwrap_or_default(),
                "resources": r.resources,
            });
            if let Some(n) = r.resource_names.filter(|n| !n.is_empty()) {
                v["resourceNames"] = json!(n);
            }
            resource.push(v);
        }
    }
    (Value::Array(resource), Value::Array(non_resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            ..PolicyRule::default()
        }
    }

    fn attrs(verb: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes::resource(
            UserInfo::new("u", vec![]),
            verb,
            "",
            resource,
            sub,
            "default",
            name,
        )
    }

    #[test]
    fn rules_match_like_upstream() {
        let r = rule(&["get", "list"], &[""], &["pods"]);
        assert!(rule_allows(&r, &attrs("get", "pods", "", "p")));
        assert!(!rule_allows(&r, &attrs("create", "pods", "", "")));
        assert!(
            !rule_allows(&r, &attrs("get", "pods", "log", "p")),
            "subresources are separate"
        );
        let r = rule(&["get"], &[""], &["pods/log"]);
        assert!(rule_allows(&r, &attrs("get", "pods", "log", "p")));
        let r = rule(&["get"], &[""], &["*/status"]);
        assert!(rule_allows(&r, &attrs("get", "pods", "status", "p")));
        let mut r = rule(&["get"], &[""], &["configmaps"]);
        r.resource_names = Some(vec!["only".into()]);
        assert!(rule_allows(&r, &attrs("get", "configmaps", "", "only")));
        assert!(!rule_allows(&r, &attrs("get", "configmaps", "", "other")));
        assert!(!rule_allows(&r, &attrs("list", "configmaps", "", "")));
        let r = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/healthz".into(), "/api/*".into()]),
            ..PolicyRule::default()
        };
        let mut a = attrs("get", "", "", "");
        a.resource_request = false;
        a.path = "/api/v1".into();
        assert!(rule_allows(&r, &a));
        a.path = "/metrics".into();
        assert!(!rule_allows(&r, &a));
    }

    #[test]
    fn the_allowing_binding_is_named_as_upstream() {
        let mut p = Policy::default();
        let put = |p: &mut Policy, kind: Kind, v: serde_json::Value| {
            p.put(kind, v.to_string().as_bytes());
        };
        let rules = |resource: &str| json!([{"apiGroups": [""], "resources": [resource], "verbs": ["get"]}]);
        put(
            &mut p,
            Kind::ClusterRole,
            json!({"metadata": {"name": "pod-reader"}, "rules": rules("pods")}),
        );
        put(
            &mut p,
            Kind::ClusterRoleBinding,
            json!({"metadata": {"name": "read-pods"},
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "pod-reader"},
                "subjects": [{"kind": "User", "name": "someone"}, {"kind": "Group", "name": "readers"}]}),
        );
        put(
            &mut p,
            Kind::Role,
            json!({"metadata": {"name": "cm-reader", "namespace": "dev"}, "rules": rules("configmaps")}),
        );
        put(
            &mut p,
            Kind::RoleBinding,
            json!({"metadata": {"name": "cms", "namespace": "dev"},
                "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "cm-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "builder"}]}),
        );
        let mut a = attrs("get", "pods", "", "p");
        a.user = UserInfo::new("jane", vec!["readers".into()]);
        a.namespace = "dev".into();
        assert_eq!(
            p.allowed_by(&a).as_deref(),
            Some(
                "RBAC: allowed by ClusterRoleBinding \"read-pods\" of ClusterRole \"pod-reader\" to Group \"readers\""
            )
        );
        a.user = UserInfo::new("system:serviceaccount:dev:builder", vec![]);
        a.resource = "configmaps".into();
        assert_eq!(
            p.allowed_by(&a).as_deref(),
            Some(
                "RBAC: allowed by RoleBinding \"cms/dev\" of Role \"cm-reader\" to ServiceAccount \"builder/dev\""
            )
        );
        a.verb = "delete".into();
        assert_eq!(p.allowed_by(&a), None);
    }

    #[test]
    fn subjects() {
        let sa = UserInfo::new("system:serviceaccount:ns1:builder", vec!["g1".into()]);
        let subj = |kind: &str, name: &str, ns: Option<&str>| Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(str::to_string),
            ..Subject::default()
        };
        assert!(applies(
            Some(&[subj("ServiceAccount", "builder", None)]),
            &sa,
            "ns1"
        ));
        assert!(!applies(
            Some(&[subj("ServiceAccount", "builder", None)]),
            &sa,
            "ns2"
        ));
        assert!(applies(
            Some(&[subj("ServiceAccount", "builder", Some("ns1"))]),
            &sa,
            "ns2"
        ));
        assert!(applies(Some(&[subj("Group", "g1", None)]), &sa, ""));
        assert!(!applies(Some(&[subj("User", "builder", None)]), &sa, ""));
    }

    #[test]
    fn coverage() {
        let owned = vec![rule(&["get", "list"], &[""], &["pods", "configmaps"])];
        assert!(uncovered(&owned, &[rule(&["get"], &[""], &["pods"])]).is_empty());
        let missing = uncovered(&owned, &[rule(&["get", "create"], &[""], &["pods"])]);
        assert_eq!(
            missing,
            ["{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"create\"]}"]
        );
        // A wildcard is only covered by a wildcard.
        assert!(!uncovered(&owned, &[rule(&["*"], &[""], &["pods"])]).is_empty());
        let all = vec![rule(&["*"], &["*"], &["*"])];
        assert!(uncovered(&all, &[rule(&["*"], &["apps"], &["deployments/scale"])]).is_empty());
    }

    #[test]
    fn selectors() {
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "rbac.authorization.k8s.io/aggregate-to-view".to_string(),
                "true".to_string(),
            )])),
            ..LabelSelector::default()
        };
        let mut labels = BTreeMap::new();
        assert!(!selector_matches(&sel, &labels));
        labels.insert(
            "rbac.authorization.k8s.io/aggregate-to-view".to_string(),
            "true".to_string(),
        );
        assert!(selector_matches(&sel, &labels));
    }
}
