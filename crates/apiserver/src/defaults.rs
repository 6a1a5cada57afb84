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
            if let Some(spec) = child(o, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "minReadySeconds", json!(0));
                if let Some(t) = existing(spec, "template") {
                    pod_template(t);
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

/// `SetDefaults_PodSpec` and the container, probe and volume defaults under it.
fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in each(spec, key) {
            container(c);
        }
    }
    for v in each(spec, "volumes") {
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
