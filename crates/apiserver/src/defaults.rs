//! Defaulting: the values upstream's `SetDefaults_*` functions (and the defaulting admission
//! plugins that every cluster runs: ServiceAccount, DefaultTolerationSeconds, Priority) fill in,
//! applied to every object a client writes. Idempotent: defaulting a defaulted object changes
//! nothing.

use serde_json::{Map, Value, json};

use crate::registry::ResourceInfo;

mod groups;

/// Sets `key` in `obj` when it is absent or null.
fn default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    match obj.get(key) {
        None | Some(Value::Null) => {
            obj.insert(key.to_string(), value);
        }
        Some(_) => {}
    }
}

/// Sets the string `key` in `obj` when it is absent, null or empty (a Go string field's zero
/// value).
fn default_empty(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj
        .get(key)
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        obj.insert(key.to_string(), value);
    }
}

/// The object at `key` in `obj`, created empty if absent.
fn child<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let v = obj
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
}

/// The object at `key`, only if present.
fn existing<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    obj.get_mut(key).and_then(Value::as_object_mut)
}

fn each<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flat_map(|a| a.iter_mut())
        .filter_map(Value::as_object_mut)
}

/// Applies the defaults of `info`'s kind to `obj`. `creating` adds what admission adds on
/// create only (pod tolerations, service account).
pub(crate) fn apply(info: &ResourceInfo, obj: &mut Value, creating: bool) {
    let Some(o) = obj.as_object_mut() else { return };
    match (info.group, info.kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::default_crd(obj),
        ("", "Pod") => {
            // Upstream's ServiceAccount admission leaves mirror pods alone (they may not
            // reference API objects: NodeRestriction).
            let mirror = o
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get("kubernetes.io/config.mirror"))
                .is_some();
            if let Some(spec) = child(o, "spec") {
                pod_spec(spec);
                pod_requests_from_limits(spec);
                default(spec, "enableServiceLinks", json!(true));
                host_network_ports(spec);
                if creating {
                    pod_admission(spec, !mirror);
                }
            }
        }
        ("", "LimitRange") => {
            if let Some(spec) = child(o, "spec") {
                for item in each(spec, "limits") {
                    limit_range_item(item);
                }
            }
        }
        ("", "PodTemplate") => {
            if let Some(t) = existing(o, "template") {
                pod_template(t);
            }
        }
        ("", "ReplicationController") => {
            replication_controller_labels(o);
            if let Some(spec) = child(o, "spec") {
                default(spec, "replicas", json!(1));
                if let Some(t) = existing(spec, "template") {
                    pod_template(t);
                }
            }
        }
        ("", "Endpoints") => {
            // `SetDefaults_Endpoints`.
            for subset in each(o, "subsets") {
                for port in each(subset, "ports") {
                    default_empty(port, "protocol", json!("TCP"));
                }
            }
        }
        ("", "Service") => {
            if let Some(spec) = child(o, "spec") {
                service_spec(spec);
            }
        }
        ("", "Secret") => {
            default(o, "type", json!("Opaque"));
            merge_string_data(o);
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "minReplicas", json!(1));
                // v2: no metric is 80% cpu (v1 gets it through its conversion to v2).
                if info.version == "v2"
                    && spec
                        .get("metrics")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty)
                {
                    spec.insert(
                        "metrics".into(),
                        json!([crate::conversion::default_cpu_metric()]),
                    );
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("", "PersistentVolume") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                default(spec, "volumeMode", json!("Filesystem"));
                if let Some(h) = existing(spec, "hostPath") {
                    default(h, "type", json!(""));
                }
                in_tree_sources(spec);
            }
        }
        ("", "Node") => {
            // `SetDefaults_NodeStatus`: what is allocatable is the capacity unless said.
            if let Some(status) = existing(o, "status")
                && status.get("allocatable").is_none_or(Value::is_null)
                && let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned()
            {
                status.insert("allocatable".into(), capacity);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                if let Some(strategy) = child(spec, "strategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                        && let Some(ru) = child(strategy, "rollingUpdate")
                    {
                        default(ru, "maxUnavailable", json!("25%"));
                        default(ru, "maxSurge", json!("25%"));
                    }
                }
                if let Some(t) = existing(spec, "template") {
                    pod_template(t);
                }
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "replicas", json!(1));
                if let Some(t) = existing(spec, "template") {
                    pod_template(t);
                }
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "revisionHistoryLimit", json!(10));
                if let Some(us) = child(spec, "updateStrategy") {
                    default(us, "type", json!("RollingUpdate"));
                    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                        && let Some(ru) = child(us, "rollingUpdate")
                    {
                        default(ru, "partition", json!(0));
                    }
                }
                if let Some(p) = child(spec, "persistentVolumeClaimRetentionPolicy") {
                    default(p, "whenDeleted", json!("Retain"));
                    default(p, "whenScaled", json!("Retain"));
                }
                // The claim templates get a claim's defaults (`SetDefaults_PersistentVolumeClaim`
                // and `SetDefaults_PersistentVolumeClaimSpec`), status included.
                for claim in each(spec, "volumeClaimTemplates") {
                    if let Some(cs) = child(claim, "spec") {
                        default(cs, "volumeMode", json!("Filesystem"));
                    }
                    if let Some(status) = child(claim, "status") {
                        default_empty(status, "phase", json!("Pending"));
                    }
                }
                if let Some(t) = existing(spec, "template") {
                    pod_template(t);
                }
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "revisionHistoryLimit", json!(10));
                if let Some(us) = child(spec, "updateStrategy") {
                    default(us, "type", json!("RollingUpdate"));
                    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                        && let Some(ru) = child(us, "rollingUpdate")
                    {
                        default(ru, "maxUnavailable", json!(1));
                        default(ru, "maxSurge", json!(0));
                    }
                }
                if let Some(t) = existing(spec, "template") {
                    pod_template(t);
                }
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = child(o, "spec") {
                job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = child(o, "spec") {
                default(spec, "concurrencyPolicy", json!("Allow"));
                default(spec, "suspend", json!(false));
                default(spec, "successfulJobsHistoryLimit", json!(3));
                default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(jt) = existing(spec, "jobTemplate")
                    && let Some(js) = child(jt, "spec")
                {
                    job_spec(js);
                }
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            // `SetDefaults_Subject`: users and groups are RBAC's, service accounts core's.
            for subject in each(o, "subjects") {
                let kind = subject.get("kind").and_then(Value::as_str).unwrap_or("");
                let group = match kind {
                    "User" | "Group" => "rbac.authorization.k8s.io",
                    _ => "",
                };
                if subject
                    .get("apiGroup")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    subject.insert("apiGroup".into(), json!(group));
                }
            }
        }
        (group, kind) => groups::apply(group, kind, o),
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    default(spec, "parallelism", json!(1));
    // Upstream `SetDefaults_Job`: unlimited global failures when failures count per index.
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    default(
        spec,
        "backoffLimit",
        json!(if per_index { i32::MAX } else { 6 }),
    );
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    // Upstream: replacements wait for a pod to be `Failed` when a podFailurePolicy decides on
    // the pod's final state.
    let failure_policy = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
    default(
        spec,
        "podReplacementPolicy",
        json!(if failure_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
    if let Some(t) = existing(spec, "template") {
        pod_template(t);
    }
}

fn pod_template(t: &mut Map<String, Value>) {
    if let Some(spec) = child(t, "spec") {
        pod_spec(spec);
    }
}

/// `SetDefaults_PodSpec` and the container, probe and volume defaults under it (of pods and
/// pod templates; `enableServiceLinks` is a pod's only, `SetDefaults_Pod`).
///
/// Also what the pod strategies' `dropDisabledPodFields` does with v1.33's default feature
/// gates before validating: pod-level `resources` (`PodLevelResources`, alpha) are dropped
/// (upstream keeps them on an update of an object that has them, which rk3s never stores).
fn pod_spec(spec: &mut Map<String, Value>) {
    spec.remove("resources");
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in each(spec, key) {
            container(c);
        }
    }
    for v in each(spec, "volumes") {
        volume_source(v);
        for (kind, mode) in [
            ("configMap", 420),
            ("secret", 420),
            ("projected", 420),
            ("downwardAPI", 420),
        ] {
            if let Some(src) = existing(v, kind) {
                default(src, "defaultMode", json!(mode));
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    default(c, "imagePullPolicy", json!(pull_policy(&image)));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    for p in each(c, "ports") {
        default(p, "protocol", json!("TCP"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = existing(c, probe) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            http_get(p);
        }
    }
    if let Some(lc) = existing(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = existing(lc, hook) {
                http_get(h);
            }
        }
    }
    for e in each(c, "env") {
        if let Some(vf) = existing(e, "valueFrom")
            && let Some(fr) = existing(vf, "fieldRef")
        {
            default(fr, "apiVersion", json!("v1"));
        }
    }
}

/// `SetDefaults_HTTPGetAction` of a probe's or lifecycle hook's `httpGet`: path `/`, scheme
/// `HTTP`.
fn http_get(handler: &mut Map<String, Value>) {
    if let Some(h) = existing(handler, "httpGet") {
        default(h, "path", json!("/"));
        default(h, "scheme", json!("HTTP"));
    }
}

/// The defaults of a volume and inside its source: no source is an `emptyDir`
/// (`SetDefaults_Volume`), the downward API's field references
/// (`SetDefaults_ObjectFieldSelector`), a projected token's lifetime
/// (`SetDefaults_ServiceAccountTokenProjection`: an hour), a host path's `type` (`""`,
/// `SetDefaults_HostPathVolumeSource`), an ephemeral volume's claim `volumeMode`
/// (`Filesystem`), an image volume's pull policy.
fn volume_source(v: &mut Map<String, Value>) {
    let sourceless = v
        .iter()
        .all(|(k, val)| k == "name" || val.is_null() || !crate::validation::is_volume_source(k));
    if sourceless {
        v.insert("emptyDir".into(), json!({}));
    }
    if let Some(h) = existing(v, "hostPath") {
        default(h, "type", json!(""));
    }
    in_tree_sources(v);
    if let Some(e) = existing(v, "ephemeral")
        && let Some(t) = existing(e, "volumeClaimTemplate")
        && let Some(cs) = child(t, "spec")
    {
        default(cs, "volumeMode", json!("Filesystem"));
    }
    fn field_refs(d: &mut Map<String, Value>) {
        for item in each(d, "items") {
            if let Some(fr) = existing(item, "fieldRef") {
                default(fr, "apiVersion", json!("v1"));
            }
        }
    }
    if let Some(d) = existing(v, "downwardAPI") {
        field_refs(d);
    }
    if let Some(p) = existing(v, "projected") {
        for src in each(p, "sources") {
            if let Some(d) = existing(src, "downwardAPI") {
                field_refs(d);
            }
            if let Some(t) = existing(src, "serviceAccountToken") {
                default(t, "expirationSeconds", json!(3600));
            }
        }
    }
    if let Some(image) = existing(v, "image") {
        let reference = image
            .get("reference")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        default(image, "pullPolicy", json!(pull_policy(&reference)));
    }
}

/// The declarative defaults (`+default` markers of `k8s.io/api/core/v1`) of the in-tree volume
/// sources a pod volume or a PersistentVolume (`v`) may have: iSCSI's interface, RBD's pool,
/// user and keyring, Azure Disk's caching mode, filesystem, read-only and kind, ScaleIO's
/// storage mode and filesystem. String fields are unset when empty (Go's zero value).
fn in_tree_sources(v: &mut Map<String, Value>) {
    if let Some(s) = existing(v, "iscsi") {
        default_empty(s, "iscsiInterface", json!("default"));
    }
    if let Some(s) = existing(v, "rbd") {
        default_empty(s, "pool", json!("rbd"));
        default_empty(s, "user", json!("admin"));
        default_empty(s, "keyring", json!("/etc/ceph/keyring"));
    }
    if let Some(s) = existing(v, "azureDisk") {
        default(s, "cachingMode", json!("ReadWrite"));
        default(s, "fsType", json!("ext4"));
        default(s, "readOnly", json!(false));
        default(s, "kind", json!("Shared"));
    }
    if let Some(s) = existing(v, "scaleIO") {
        default_empty(s, "storageMode", json!("ThinProvisioned"));
        default_empty(s, "fsType", json!("xfs"));
    }
}

/// `SetDefaults_ReplicationController`: a controller whose template has labels selects them
/// when it has no selector, and has them when it has no labels of its own.
fn replication_controller_labels(o: &mut Map<String, Value>) {
    let labels = o
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .cloned();
    let Some(labels) = labels else { return };
    let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(Map::is_empty);
    if let Some(spec) = child(o, "spec")
        && empty(spec.get("selector"))
    {
        spec.insert("selector".into(), Value::Object(labels.clone()));
    }
    if let Some(meta) = child(o, "metadata")
        && empty(meta.get("labels"))
    {
        meta.insert("labels".into(), Value::Object(labels));
    }
}

/// `SetDefaults_Pod`: a host-network pod's container ports without a host port get the
/// container port (pods only: pod templates keep theirs unset, as upstream).
fn host_network_ports(spec: &mut Map<String, Value>) {
    if spec.get("hostNetwork").and_then(Value::as_bool) != Some(true) {
        return;
    }
    for key in ["containers", "initContainers"] {
        for c in each(spec, key) {
            for p in each(c, "ports") {
                let unset = p.get("hostPort").is_none_or(|h| h.is_null() || h == 0);
                if unset && let Some(cp) = p.get("containerPort").cloned() {
                    p.insert("hostPort".into(), cp);
                }
            }
        }
    }
}

/// `SetDefaults_Pod`: a container's limit with no request is also its request (pods only, not
/// pod templates, as upstream).
fn pod_requests_from_limits(spec: &mut Map<String, Value>) {
    for key in ["initContainers", "containers"] {
        for c in each(spec, key) {
            let Some(resources) = existing(c, "resources") else {
                continue;
            };
            let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
                continue;
            };
            if let Some(requests) = child(resources, "requests") {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// `SetDefaults_LimitRangeItem`: for `Container` items, `default` from `max`, then
/// `defaultRequest` from `default`, then from `min`.
fn limit_range_item(item: &mut Map<String, Value>) {
    if item.get("type").and_then(Value::as_str) != Some("Container") {
        return;
    }
    for (from, to) in [
        ("max", "default"),
        ("default", "defaultRequest"),
        ("min", "defaultRequest"),
    ] {
        let Some(source) = item.get(from).and_then(Value::as_object).cloned() else {
            continue;
        };
        if let Some(target) = child(item, to) {
            for (k, v) in source {
                target.entry(k).or_insert(v);
            }
        }
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`, as upstream.
pub(crate) fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// What the admission plugins every cluster runs add to a new pod.
fn pod_admission(spec: &mut Map<String, Value>, service_account: bool) {
    // ServiceAccount: the namespace's default account.
    if service_account {
        default(spec, "serviceAccountName", json!("default"));
        let sa = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(Value::Null);
        default(spec, "serviceAccount", sa);
        service_account_token_volume(spec);
    }
    // Priority.
    default(spec, "priority", json!(0));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    // DefaultTolerationSeconds: tolerate not-ready and unreachable nodes for 5 minutes.
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let has = list.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    || (t.get("key").is_none()
                        && t.get("operator").and_then(Value::as_str) == Some("Exists"))
            });
            if !has {
                list.push(json!({
                    "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300,
                }));
            }
        }
    }
}

/// Where the ServiceAccount admission plugin mounts the API credentials in every container.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin's projected volume: a bound token of the pod's service
/// account, the cluster CA (from the `kube-root-ca.crt` ConfigMap every namespace has) and the
/// namespace, mounted read-only at [`SERVICE_ACCOUNT_MOUNT`] in every container, unless the pod
/// opts out (`automountServiceAccountToken: false`) or already mounts something there.
fn service_account_token_volume(spec: &mut Map<String, Value>) {
    if spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
        return;
    }
    let mounts_there = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|ms| {
                ms.iter().any(|m| {
                    m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT)
                })
            })
    };
    let containers = ["initContainers", "containers"];
    let already = containers.iter().any(|key| {
        spec.get(*key)
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(mounts_there))
    });
    if already {
        return;
    }
    let name = crate::validation::generate_name("kube-api-access-");
    let volume = json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef":
                    {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    if let Some(vs) = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut()
    {
        vs.push(volume);
    }
    for key in containers {
        for c in each(spec, key) {
            if let Some(ms) = c
                .entry("volumeMounts")
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                ms.push(json!({
                    "name": name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT,
                }));
            }
        }
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("None") {
        spec.remove("sessionAffinityConfig");
    }
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ty != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    // Externally accessible: node ports, a load balancer, or external IPs.
    let external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    if ty == "NodePort" || ty == "LoadBalancer" || (ty == "ClusterIP" && external_ips) {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    let affinity_timeout = spec
        .get("sessionAffinityConfig")
        .and_then(|c| c.pointer("/clientIP/timeoutSeconds"))
        .is_some_and(|t| !t.is_null());
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") && !affinity_timeout
    {
        spec.insert(
            "sessionAffinityConfig".into(),
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    for p in each(spec, "ports") {
        default(p, "protocol", json!("TCP"));
        // Unset, 0 or "" (upstream's zero IntOrString) → the port.
        if matches!(p.get("targetPort"), Some(t) if *t == json!(0) || *t == json!("")) {
            p.remove("targetPort");
        }
        if let Some(port) = p.get("port").cloned() {
            default(p, "targetPort", port);
        }
    }
}

/// `stringData` is write-only: its entries are merged into `data` (base64, overriding) and it
/// is dropped, as upstream's v1 Secret conversion does.
fn merge_string_data(o: &mut Map<String, Value>) {
    use base64::Engine as _;
    let Some(Value::Object(string_data)) = o.remove("stringData") else {
        return;
    };
    let data = o.entry("data").or_insert_with(|| Value::Object(Map::new()));
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            if let Some(v) = v.as_str() {
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;

    #[test]
    fn pull_policies() {
        assert_eq!(pull_policy("busybox"), "Always");
        assert_eq!(pull_policy("busybox:latest"), "Always");
        assert_eq!(pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(pull_policy("registry:5000/busybox"), "Always");
        assert_eq!(pull_policy("registry:5000/busybox:1"), "IfNotPresent");
        assert_eq!(pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn jobs_with_a_pod_failure_policy_replace_failed_pods_only() {
        let jobs = REGISTRY.find("batch", "v1", "jobs").expect("jobs");
        let template = json!({"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:1.36"}]}});
        let mut plain = json!({"spec": {"template": template.clone()}});
        apply(jobs, &mut plain, true);
        assert_eq!(plain["spec"]["podReplacementPolicy"], "TerminatingOrFailed");
        let mut with_policy = json!({"spec": {"template": template, "podFailurePolicy":
            {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}});
        apply(jobs, &mut with_policy, true);
        assert_eq!(with_policy["spec"]["podReplacementPolicy"], "Failed");
    }

    #[test]
    fn deployment_defaults_reach_the_pod_template_and_are_idempotent() {
        let info = REGISTRY
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let mut d = json!({"spec": {"selector": {}, "template": {"spec": {"containers": [
            {"name": "c", "image": "busybox:1.36", "ports": [{"containerPort": 80}]}]}}}});
        apply(info, &mut d, true);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
        assert!(
            pod.get("tolerations").is_none(),
            "admission defaults are for pods only"
        );
        let again = {
            let mut x = d.clone();
            apply(info, &mut x, true);
            x
        };
        assert_eq!(again, d);
    }

    #[test]
    fn pod_admission_and_service_defaults() {
        let pods = REGISTRY.find("", "v1", "pods").expect("pods");
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        apply(pods, &mut p, true);
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        let svcs = REGISTRY.find("", "v1", "services").expect("services");
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(svcs, &mut s, true);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["sessionAffinity"], "None");
    }

    #[test]
    fn host_network_ports_and_http_handlers() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "c", "image": "nginx",
            "ports": [{"containerPort": 8080}, {"containerPort": 53, "hostPort": 53, "protocol": "UDP"}],
            "readinessProbe": {"httpGet": {"port": 8080}},
            "lifecycle": {"postStart": {"httpGet": {"port": 8080, "path": "/up", "scheme": "HTTPS"}}}}],
            "volumes": [{"name": "t", "projected": {"sources": [
                {"serviceAccountToken": {"path": "t"}},
                {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}},
                {"name": "img", "image": {"reference": "quay.io/x/y:1.0"}}]});
        let pods = REGISTRY.find("", "v1", "pods").expect("pods");
        let mut p = json!({ "spec": spec.clone() });
        apply(pods, &mut p, false);
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["ports"][0]["hostPort"], 8080);
        assert_eq!(c["ports"][1]["hostPort"], 53);
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/");
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(c["lifecycle"]["postStart"]["httpGet"]["scheme"], "HTTPS");
        let sources = &p["spec"]["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3600);
        assert_eq!(
            sources[1]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
            "v1"
        );
        assert_eq!(
            p["spec"]["volumes"][1]["image"]["pullPolicy"],
            "IfNotPresent"
        );
        // A pod template's host ports stay unset (upstream defaults them on the pod).
        let deployments = REGISTRY
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let mut d = json!({"spec": {"selector": {}, "template": {"spec": spec}}});
        apply(deployments, &mut d, true);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert!(c["ports"][0].get("hostPort").is_none());
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/");
    }

    #[test]
    fn replication_controllers_select_their_template_labels() {
        let rcs = REGISTRY
            .find("", "v1", "replicationcontrollers")
            .expect("replicationcontrollers");
        let template = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}});
        let mut rc = json!({"metadata": {"name": "web"}, "spec": {"template": template.clone()}});
        apply(rcs, &mut rc, true);
        assert_eq!(rc["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(rc["spec"]["replicas"], 1);
        assert!(rc["spec"].get("minReadySeconds").is_none());
        // Its own selector and labels stay; no template labels, nothing to copy.
        let mut own = json!({"metadata": {"labels": {"tier": "x"}},
            "spec": {"selector": {"app": "other"}, "template": template}});
        apply(rcs, &mut own, true);
        assert_eq!(own["spec"]["selector"], json!({"app": "other"}));
        assert_eq!(own["metadata"]["labels"], json!({"tier": "x"}));
        let mut bare = json!({"spec": {"template": {"spec": {"containers": []}}}});
        apply(rcs, &mut bare, true);
        assert!(bare["spec"].get("selector").is_none());
        assert!(bare.get("metadata").is_none());
    }

    #[test]
    fn endpoints_services_and_claim_templates() {
        let eps = REGISTRY.find("", "v1", "endpoints").expect("endpoints");
        let mut e = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}],
            "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}, {"port": 81, "protocol": ""}]}]});
        apply(eps, &mut e, true);
        let ports = &e["subsets"][0]["ports"];
        assert_eq!(
            [
                &ports[0]["protocol"],
                &ports[1]["protocol"],
                &ports[2]["protocol"]
            ],
            ["TCP", "UDP", "TCP"]
        );
        let svcs = REGISTRY.find("", "v1", "services").expect("services");
        let mut s = json!({"spec": {"ports": [{"port": 80}],
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}});
        apply(svcs, &mut s, true);
        assert!(s["spec"].get("sessionAffinityConfig").is_none(), "{s}");
        let sts = REGISTRY
            .find("apps", "v1", "statefulsets")
            .expect("statefulsets");
        let mut set = json!({"spec": {"selector": {}, "template": {"spec": {"containers": []}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        apply(sts, &mut set, true);
        let claim = &set["spec"]["volumeClaimTemplates"][0];
        assert_eq!(claim["spec"]["volumeMode"], "Filesystem");
        assert_eq!(claim["status"], json!({"phase": "Pending"}));
        let pvs = REGISTRY
            .find("", "v1", "persistentvolumes")
            .expect("persistentvolumes");
        let mut pv = json!({"spec": {"hostPath": {"path": "/data"}}});
        apply(pvs, &mut pv, true);
        assert_eq!(pv["spec"]["hostPath"]["type"], "");
        let mut pv = json!({"spec": {"rbd": {"monitors": ["m"], "image": "i", "pool": ""}}});
        apply(pvs, &mut pv, true);
        assert_eq!(
            pv["spec"]["rbd"],
            json!({"monitors": ["m"], "image": "i", "pool": "rbd", "user": "admin",
                "keyring": "/etc/ceph/keyring"})
        );
        let nodes = REGISTRY.find("", "v1", "nodes").expect("nodes");
        let mut node = json!({"status": {"capacity": {"cpu": "4", "pods": "110"}}});
        apply(nodes, &mut node, true);
        assert_eq!(
            node["status"]["allocatable"],
            json!({"cpu": "4", "pods": "110"})
        );
    }

    #[test]
    fn volumes_without_a_source_are_empty_dirs_and_pod_resources_are_dropped() {
        let spec = json!({"resources": {"limits": {"cpu": "1"}},
            "containers": [{"name": "c", "image": "nginx:1.27"}],
            "volumes": [{"name": "scratch"},
                {"name": "host", "hostPath": {"path": "/var/log"}},
                {"name": "typed", "hostPath": {"path": "/run", "type": "Directory"}},
                {"name": "claim", "ephemeral": {"volumeClaimTemplate": {"spec":
                    {"accessModes": ["ReadWriteOnce"]}}}},
                {"name": "disk", "azureDisk": {"diskName": "d", "diskURI": "u"}},
                {"name": "iscsi", "iscsi": {"targetPortal": "t", "iqn": "q", "lun": 0}},
                {"name": "sio", "scaleIO": {"gateway": "g", "system": "s",
                    "secretRef": {"name": "x"}, "fsType": "ext4"}}]});
        let pods = REGISTRY.find("", "v1", "pods").expect("pods");
        let mut p = json!({ "spec": spec.clone() });
        apply(pods, &mut p, false);
        let vols = &p["spec"]["volumes"];
        assert_eq!(vols[0], json!({"name": "scratch", "emptyDir": {}}));
        assert_eq!(vols[1]["hostPath"]["type"], "");
        assert_eq!(vols[2]["hostPath"]["type"], "Directory");
        assert_eq!(
            vols[3]["ephemeral"]["volumeClaimTemplate"]["spec"]["volumeMode"],
            "Filesystem"
        );
        assert_eq!(
            vols[4]["azureDisk"],
            json!({"diskName": "d", "diskURI": "u", "cachingMode": "ReadWrite",
                "fsType": "ext4", "readOnly": false, "kind": "Shared"})
        );
        assert_eq!(vols[5]["iscsi"]["iscsiInterface"], "default");
        assert_eq!(vols[6]["scaleIO"]["storageMode"], "ThinProvisioned");
        assert_eq!(vols[6]["scaleIO"]["fsType"], "ext4");
        assert!(p["spec"].get("resources").is_none());
        assert_eq!(p["spec"]["enableServiceLinks"], true);
        // Templates get the same, but not the pod's own `enableServiceLinks`.
        let deployments = REGISTRY
            .find("apps", "v1", "deployments")
            .expect("deployments");
        let mut d = json!({"spec": {"selector": {}, "template": {"spec": spec}}});
        apply(deployments, &mut d, true);
        let t = &d["spec"]["template"]["spec"];
        assert_eq!(t["volumes"][0]["emptyDir"], json!({}));
        assert!(t.get("resources").is_none());
        assert!(t.get("enableServiceLinks").is_none());
    }

    #[test]
    fn service_account_credentials_are_projected_into_every_container() {
        let pods = REGISTRY.find("", "v1", "pods").expect("pods");
        let mut p = json!({"spec": {
            "initContainers": [{"name": "i", "image": "busybox"}],
            "containers": [{"name": "c", "image": "busybox",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }});
        apply(pods, &mut p, true);
        let volume = &p["spec"]["volumes"][1];
        let name = volume["name"].as_str().expect("name");
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        let sources = &volume["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        for (key, mount) in [("initContainers", 0), ("containers", 1)] {
            let m = &p["spec"][key][0]["volumeMounts"][mount];
            assert_eq!(m["name"], name);
            assert_eq!(m["mountPath"], SERVICE_ACCOUNT_MOUNT);
            assert_eq!(m["readOnly"], true);
        }
        // Updates do not add another one.
        let before = p.clone();
        apply(pods, &mut p, false);
        assert_eq!(p, before);

        for spec in [
            json!({"automountServiceAccountToken": false,
                   "containers": [{"name": "c", "image": "busybox"}]}),
            json!({"containers": [{"name": "c", "image": "busybox", "volumeMounts":
                   [{"name": "own", "mountPath": SERVICE_ACCOUNT_MOUNT}]}]}),
        ] {
            let mut p = json!({ "spec": spec });
            apply(pods, &mut p, true);
            assert!(p["spec"].get("volumes").is_none(), "{p}");
        }
    }
}
