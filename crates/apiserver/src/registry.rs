//! The resource registry: every resource the apiserver serves, built from the k8s-openapi
//! types (group, version, kind, plural and scope come from `k8s_openapi::Resource`), plus the
//! upstream facts the types do not carry: short names, categories, verbs, subresources, the
//! storage key prefix and the name validation rule.
//!
//! Adding a built-in resource is one line in [`Registry::builtin`].

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use k8s_openapi::api::admissionregistration::v1 as admissionregistration;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::authentication::v1 as authentication;
use k8s_openapi::api::authorization::v1 as authorization;
use k8s_openapi::api::autoscaling::v1 as autoscaling_v1;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::certificates::v1 as certificates;
use k8s_openapi::api::coordination::v1 as coordination;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::api::node::v1 as node;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::api::scheduling::v1 as scheduling;
use k8s_openapi::api::storage::v1 as storage;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};
use serde_json::Value;

use crate::validation::NameRule;

/// Whether a k8s-openapi scope type is namespaced.
pub(crate) trait ScopeKind {
    const NAMESPACED: bool;
}
impl ScopeKind for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl ScopeKind for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// Decodes a JSON object into its typed form and encodes it back: rejects objects that do not
/// fit the schema and drops unknown fields, as upstream decoding does.
pub(crate) type Roundtrip = fn(Value) -> Result<Value, String>;

/// Adds a type's JSON schema (and those it refers to) to a generator; returns a reference.
pub(crate) type SchemaFn =
    fn(&mut k8s_openapi::schemars::SchemaGenerator) -> k8s_openapi::schemars::Schema;

pub(crate) fn schema_of<T: k8s_openapi::schemars::JsonSchema>(
    g: &mut k8s_openapi::schemars::SchemaGenerator,
) -> k8s_openapi::schemars::Schema {
    g.subschema_for::<T>()
}

fn roundtrip<T>(v: Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The verbs of a collection with every operation.
pub(crate) const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces cannot be deleted as a collection.
const NO_DELETECOLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
/// Verbs of a status subresource.
pub(crate) const STATUS_VERBS: &[&str] = &["get", "patch", "update"];
/// Verbs of a scale subresource.
pub(crate) const SCALE_VERBS: &[&str] = &["get", "patch", "update"];

/// One served resource.
#[derive(Debug, Clone)]
pub(crate) struct ResourceInfo {
    /// API group; empty for the core group.
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) list_kind: &'static str,
    /// The plural name in URLs (`pods`).
    pub(crate) plural: &'static str,
    /// The lower-case kind (`pod`).
    pub(crate) singular: String,
    pub(crate) namespaced: bool,
    pub(crate) short_names: &'static [&'static str],
    pub(crate) categories: &'static [&'static str],
    pub(crate) verbs: &'static [&'static str],
    /// Whether the resource has a `status` subresource (then the main resource ignores status
    /// changes and `/status` ignores everything else).
    pub(crate) status_subresource: bool,
    /// Whether the resource has a `scale` subresource (`autoscaling/v1` Scale).
    pub(crate) scale_subresource: bool,
    /// Whether `metadata.generation` is kept (set to 1, bumped when the spec changes).
    pub(crate) generation: bool,
    /// Whether PUT on a missing object creates it.
    pub(crate) create_on_update: bool,
    /// Whether a PUT without `metadata.resourceVersion` overwrites whatever is stored
    /// (upstream's `AllowUnconditionalUpdate`); when not, it is a 422 (see
    /// [`crate::rest::handlers::merge_update`]).
    pub(crate) unconditional_update: bool,
    /// The storage prefix, without the trailing slash: `/registry/<this>/<ns>/<name>`.
    pub(crate) storage: &'static str,
    pub(crate) name_rule: NameRule,
    /// Field selector paths besides `metadata.name` and `metadata.namespace`.
    pub(crate) fields: &'static [&'static str],
    pub(crate) roundtrip: Roundtrip,
    /// The type's OpenAPI schema, from k8s-openapi.
    pub(crate) schema: SchemaFn,
    /// Set for a custom resource (one served version of a CRD): what validation, pruning,
    /// defaulting, scale, Table output and OpenAPI take from the CRD instead of a Rust type.
    /// Built-ins have `None`. See [`crate::crd`].
    pub(crate) custom: Option<Arc<crate::crd::CustomVersion>>,
    /// Set for a built-in served from another group version's storage (`events.k8s.io/v1`
    /// from core events, `autoscaling/v1` from `autoscaling/v2`): how objects convert between
    /// this version and the stored one. See [`crate::conversion`].
    pub(crate) conversion: Option<&'static crate::conversion::Conversion>,
}

impl ResourceInfo {
    /// The registry entry for a k8s-openapi type, with the defaults: all verbs, no short names,
    /// no categories, no status subresource, storage prefix = plural, DNS-1123 subdomain names.
    fn of<T>() -> Self
    where
        T: Resource
            + ListableResource
            + serde::de::DeserializeOwned
            + serde::Serialize
            + k8s_openapi::schemars::JsonSchema,
        T::Scope: ScopeKind,
    {
        ResourceInfo {
            list_kind: T::LIST_KIND,
            ..Self::create_only::<T>()
        }
        .verbs(ALL_VERBS)
    }

    /// A resource that is only ever created and never stored or listed (the review APIs).
    fn create_only<T>() -> Self
    where
        T: Resource
            + serde::de::DeserializeOwned
            + serde::Serialize
            + k8s_openapi::schemars::JsonSchema,
        T::Scope: ScopeKind,
    {
        ResourceInfo {
            group: T::GROUP,
            version: T::VERSION,
            kind: T::KIND,
            list_kind: "",
            plural: T::URL_PATH_SEGMENT,
            singular: T::KIND.to_lowercase(),
            namespaced: <T::Scope as ScopeKind>::NAMESPACED,
            short_names: &[],
            categories: &[],
            verbs: &["create"],
            status_subresource: false,
            scale_subresource: false,
            generation: false,
            create_on_update: false,
            unconditional_update: true,
            storage: T::URL_PATH_SEGMENT,
            name_rule: NameRule::Subdomain,
            fields: &[],
            roundtrip: roundtrip::<T>,
            schema: schema_of::<T>,
            custom: None,
            conversion: None,
        }
    }

    fn short(mut self, names: &'static [&'static str]) -> Self {
        self.short_names = names;
        self
    }
    fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    fn status(mut self) -> Self {
        self.status_subresource = true;
        self
    }
    fn scale(mut self) -> Self {
        self.scale_subresource = true;
        self
    }
    fn generation(mut self) -> Self {
        self.generation = true;
        self
    }
    fn storage(mut self, prefix: &'static str) -> Self {
        self.storage = prefix;
        self
    }
    fn names(mut self, rule: NameRule) -> Self {
        self.name_rule = rule;
        self
    }
    fn verbs(mut self, verbs: &'static [&'static str]) -> Self {
        self.verbs = verbs;
        self
    }
    fn create_on_update(mut self) -> Self {
        self.create_on_update = true;
        self
    }
    /// An update must name the resourceVersion it replaces.
    fn conditional_updates(mut self) -> Self {
        self.unconditional_update = false;
        self
    }
    fn fields(mut self, fields: &'static [&'static str]) -> Self {
        self.fields = fields;
        self
    }
    /// Served from `storage`'s objects (same storage prefix), converted by `conversion`.
    fn converted(
        mut self,
        storage: &'static str,
        conversion: &'static crate::conversion::Conversion,
    ) -> Self {
        self.storage = storage;
        self.conversion = Some(conversion);
        self
    }

    /// `group/version`, or `version` for the core group.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(crate) fn has_verb(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// The storage key of one object.
    pub(crate) fn key(&self, namespace: Option<&str>, name: &str) -> Vec<u8> {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/{name}", self.storage),
            _ => format!("/registry/{}/{name}", self.storage),
        }
        .into_bytes()
    }

    /// The storage prefix of a list: one namespace's objects, or all of them.
    pub(crate) fn prefix(&self, namespace: Option<&str>) -> Vec<u8> {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.storage),
            _ => format!("/registry/{}/", self.storage),
        }
        .into_bytes()
    }
}

/// A served group/version and its resources, in discovery order.
#[derive(Debug)]
pub(crate) struct GroupVersion {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) resources: Vec<ResourceInfo>,
}

impl GroupVersion {
    pub(crate) fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Every served resource.
#[derive(Debug)]
pub(crate) struct Registry {
    /// The core group first, then the named groups in upstream discovery order.
    pub(crate) groups: Vec<GroupVersion>,
}

/// The built-in registry, built once.
pub(crate) static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::builtin);

/// Field selectors of pods, as upstream (`pkg/registry/core/pod`).
const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

impl Registry {
    fn builtin() -> Self {
        use NameRule::*;
        let core = vec![
            ResourceInfo::of::<core::Namespace>()
                .short(&["ns"])
                .status()
                .names(Label)
                .verbs(NO_DELETECOLLECTION)
                .fields(&["status.phase"]),
            ResourceInfo::of::<core::ConfigMap>().short(&["cm"]),
            ResourceInfo::of::<core::Secret>().fields(&["type"]),
            ResourceInfo::of::<core::Pod>()
                .short(&["po"])
                .all()
                .status()
                .generation()
                .fields(POD_FIELDS),
            ResourceInfo::of::<core::Service>()
                .short(&["svc"])
                .all()
                .status()
                .names(Dns1035)
                .storage("services/specs"),
            ResourceInfo::of::<core::ServiceAccount>().short(&["sa"]),
            ResourceInfo::of::<core::Endpoints>()
                .short(&["ep"])
                .storage("services/endpoints")
                .create_on_update(),
            // Not stored: the health of the components (`rest::components`).
            ResourceInfo::of::<core::ComponentStatus>()
                .short(&["cs"])
                .verbs(&["get", "list"]),
            ResourceInfo::of::<core::Event>()
                .short(&["ev"])
                .names(PathSegment)
                .create_on_update()
                .fields(EVENT_FIELDS),
            ResourceInfo::of::<core::Node>()
                .short(&["no"])
                .status()
                .storage("minions")
                .fields(&["spec.unschedulable"]),
            ResourceInfo::of::<core::PersistentVolume>()
                .short(&["pv"])
                .status(),
            ResourceInfo::of::<core::PersistentVolumeClaim>()
                .short(&["pvc"])
                .status(),
            ResourceInfo::of::<core::LimitRange>().short(&["limits"]),
            ResourceInfo::of::<core::ResourceQuota>()
                .short(&["quota"])
                .status(),
            ResourceInfo::of::<core::ReplicationController>()
                .scale()
                .short(&["rc"])
                .all()
                .status()
                .generation()
                .storage("controllers"),
            ResourceInfo::of::<core::PodTemplate>(),
        ];
        let apps = vec![
            ResourceInfo::of::<apps::Deployment>()
                .scale()
                .short(&["deploy"])
                .all()
                .status()
                .generation(),
            ResourceInfo::of::<apps::ReplicaSet>()
                .scale()
                .short(&["rs"])
                .all()
                .status()
                .generation(),
            ResourceInfo::of::<apps::StatefulSet>()
                .scale()
                .short(&["sts"])
                .all()
                .status()
                .generation(),
            ResourceInfo::of::<apps::DaemonSet>()
                .short(&["ds"])
                .all()
                .status()
                .generation(),
            ResourceInfo::of::<apps::ControllerRevision>(),
        ];
        let batch = vec![
            ResourceInfo::of::<batch::Job>()
                .all()
                .status()
                .generation()
                .fields(&["status.successful"]),
            ResourceInfo::of::<batch::CronJob>()
                .short(&["cj"])
                .all()
                .status()
                .generation(),
        ];
        let events = vec![
            ResourceInfo::of::<events::Event>()
                .short(&["ev"])
                .names(PathSegment)
                .create_on_update()
                .fields(crate::conversion::EVENTS_V1_SELECTABLE)
                .converted("events", &crate::conversion::EVENTS_V1),
        ];
        let coordination = vec![
            ResourceInfo::of::<coordination::Lease>()
                .create_on_update()
                .conditional_updates(),
        ];
        let autoscaling = vec![
            ResourceInfo::of::<autoscaling::HorizontalPodAutoscaler>()
                .short(&["hpa"])
                .all()
                .status(),
        ];
        let autoscaling_v1 = vec![
            ResourceInfo::of::<autoscaling_v1::HorizontalPodAutoscaler>()
                .short(&["hpa"])
                .all()
                .status()
                .converted("horizontalpodautoscalers", &crate::conversion::HPA_V1),
        ];
        let certificates = vec![
            ResourceInfo::of::<certificates::CertificateSigningRequest>()
                .short(&["csr"])
                .status(),
        ];
        let networking = vec![
            ResourceInfo::of::<networking::Ingress>()
                .short(&["ing"])
                .status()
                .generation()
                .storage("ingress"),
            ResourceInfo::of::<networking::IngressClass>(),
            ResourceInfo::of::<networking::NetworkPolicy>()
                .short(&["netpol"])
                .generation(),
            ResourceInfo::of::<networking::IPAddress>()
                .short(&["ip"])
                .names(PathSegment),
            ResourceInfo::of::<networking::ServiceCIDR>().status(),
        ];
        let policy = vec![
            ResourceInfo::of::<policy::PodDisruptionBudget>()
                .short(&["pdb"])
                .status()
                .generation()
                .conditional_updates(),
        ];
        // The review APIs: create-only, nothing stored (served by `auth::review`).
        let authentication = vec![
            ResourceInfo::create_only::<authentication::SelfSubjectReview>(),
            ResourceInfo::create_only::<authentication::TokenReview>(),
        ];
        let authorization = vec![
            ResourceInfo::create_only::<authorization::LocalSubjectAccessReview>(),
            ResourceInfo::create_only::<authorization::SelfSubjectAccessReview>(),
            ResourceInfo::create_only::<authorization::SelfSubjectRulesReview>(),
            ResourceInfo::create_only::<authorization::SubjectAccessReview>(),
        ];
        let rbac = vec![
            ResourceInfo::of::<rbac::ClusterRoleBinding>()
                .names(PathSegment)
                .create_on_update(),
            ResourceInfo::of::<rbac::ClusterRole>()
                .names(PathSegment)
                .create_on_update(),
            ResourceInfo::of::<rbac::RoleBinding>()
                .names(PathSegment)
                .create_on_update(),
            ResourceInfo::of::<rbac::Role>()
                .names(PathSegment)
                .create_on_update(),
        ];
        let storage = vec![
            ResourceInfo::of::<storage::CSIDriver>().conditional_updates(),
            ResourceInfo::of::<storage::CSINode>().conditional_updates(),
            ResourceInfo::of::<storage::CSIStorageCapacity>().conditional_updates(),
            ResourceInfo::of::<storage::StorageClass>().short(&["sc"]),
            ResourceInfo::of::<storage::VolumeAttachment>()
                .status()
                .conditional_updates(),
        ];
        let admissionregistration = vec![
            ResourceInfo::of::<admissionregistration::MutatingWebhookConfiguration>()
                .conditional_updates(),
            ResourceInfo::of::<admissionregistration::ValidatingAdmissionPolicy>()
                .status()
                .generation()
                .conditional_updates(),
            ResourceInfo::of::<admissionregistration::ValidatingAdmissionPolicyBinding>()
                .generation()
                .conditional_updates(),
            ResourceInfo::of::<admissionregistration::ValidatingWebhookConfiguration>()
                .conditional_updates(),
        ];
        let apiextensions = vec![
            ResourceInfo::of::<apiextensions::CustomResourceDefinition>()
                .short(&["crd", "crds"])
                .status()
                .generation()
                .storage("apiextensions.k8s.io/customresourcedefinitions")
                .conditional_updates(),
        ];
        let scheduling = vec![ResourceInfo::of::<scheduling::PriorityClass>().short(&["pc"])];
        let node = vec![
            ResourceInfo::of::<node::RuntimeClass>()
                .create_on_update()
                .conditional_updates(),
        ];
        let discovery = vec![ResourceInfo::of::<discovery::EndpointSlice>()];
        // The named groups in upstream's discovery order.
        let groups = [
            core,
            apps,
            events,
            authentication,
            authorization,
            autoscaling,
            autoscaling_v1,
            batch,
            certificates,
            networking,
            policy,
            rbac,
            storage,
            admissionregistration,
            apiextensions,
            scheduling,
            coordination,
            node,
            discovery,
        ]
        .into_iter()
        .map(|resources| GroupVersion {
            group: resources[0].group,
            version: resources[0].version,
            resources,
        })
        .collect();
        Registry { groups }
    }

    /// The group/version `group`/`version`, if served.
    pub(crate) fn group_version(&self, group: &str, version: &str) -> Option<&GroupVersion> {
        self.groups
            .iter()
            .find(|g| g.group == group && g.version == version)
    }

    /// The named groups (not the core group).
    pub(crate) fn named_groups(&self) -> impl Iterator<Item = &GroupVersion> {
        self.groups.iter().filter(|g| !g.group.is_empty())
    }

    /// A resource by group, version and plural.
    pub(crate) fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.group_version(group, version)?
            .resources
            .iter()
            .find(|r| r.plural == plural)
    }

    /// A resource by group, version and plural: a built-in (borrowed from the static
    /// registry, no copy) or a custom resource of a served CRD (from the CRD registry's
    /// current snapshot; cloned out of it, cheap: its strings are interned and its CRD
    /// facts are behind an `Arc`).
    pub(crate) fn lookup(
        &'static self,
        custom: &crate::crd::CustomRegistry,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Cow<'static, ResourceInfo>> {
        if let Some(info) = self.find(group, version, plural) {
            return Some(Cow::Borrowed(info));
        }
        if self.group_version(group, version).is_some() {
            return None;
        }
        custom
            .snapshot()
            .find(group, version, plural)
            .cloned()
            .map(Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_upstream_facts() {
        let pods = REGISTRY.find("", "v1", "pods").expect("pods");
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        assert_eq!(pods.list_kind, "PodList");
        assert_eq!(pods.singular, "pod");
        assert_eq!(pods.short_names, &["po"]);
        assert_eq!(pods.key(Some("default"), "p"), b"/registry/pods/default/p");

        let ns = REGISTRY.find("", "v1", "namespaces").expect("namespaces");
        assert!(!ns.namespaced);
        assert_eq!(ns.key(Some("ignored"), "x"), b"/registry/namespaces/x");
        assert!(!ns.has_verb("deletecollection"));

        let svc = REGISTRY.find("", "v1", "services").expect("services");
        assert_eq!(svc.prefix(Some("a")), b"/registry/services/specs/a/");
        let nodes = REGISTRY.find("", "v1", "nodes").expect("nodes");
        assert_eq!(nodes.key(None, "n1"), b"/registry/minions/n1");

        let deploy = REGISTRY
            .find("apps", "v1", "deployments")
            .expect("deployments");
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.categories, &["all"]);
        let lease = REGISTRY
            .find("coordination.k8s.io", "v1", "leases")
            .expect("leases");
        assert_eq!(
            lease.key(Some("kube-node-lease"), "n"),
            b"/registry/leases/kube-node-lease/n"
        );
        assert!(REGISTRY.find("apps", "v1", "pods").is_none());
        let crd = REGISTRY
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("crds");
        assert_eq!(
            crd.key(None, "a.b.c"),
            b"/registry/apiextensions.k8s.io/customresourcedefinitions/a.b.c"
        );
        let ing = REGISTRY
            .find("networking.k8s.io", "v1", "ingresses")
            .expect("ingresses");
        assert_eq!(ing.prefix(Some("n")), b"/registry/ingress/n/");
        let crb = REGISTRY
            .find("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
            .expect("clusterrolebindings");
        assert!(!crb.namespaced);
        assert_eq!(crb.name_rule, NameRule::PathSegment);
    }

    #[test]
    fn roundtrip_rejects_wrong_types_and_drops_unknown_fields() {
        let cm = REGISTRY.find("", "v1", "configmaps").expect("cm");
        let out = (cm.roundtrip)(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1,
        }))
        .expect("valid configmap");
        assert_eq!(out["data"]["a"], "b");
        assert!(out.get("bogus").is_none());
        let err = (cm.roundtrip)(serde_json::json!({"metadata": {"name": "x"}, "data": {"a": 1}}))
            .expect_err("data values are strings");
        assert!(!err.is_empty());
    }
}
