//! The shape facts server-side apply needs about built-in types: how each list merges
//! (`x-kubernetes-list-type` atomic/set/map and its `x-kubernetes-list-map-keys`) and which
//! structs are atomic (`x-kubernetes-map-type: atomic`). Lists not named here are atomic, as
//! upstream's default for lists without a list type is.
//!
//! The facts are keyed by the field names leading to the list (list items do not count), so
//! `containers` matches `spec.containers` and `spec.template.spec.containers` alike.
//! Custom resources will answer from their structural schema instead (the hook is
//! [`Schema`]).

/// How a list merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced as a whole; owned as one field.
    Atomic,
    /// Scalars merged by value (`v:`).
    Set,
    /// Objects merged by these key fields (`k:`).
    Map(&'static [&'static str]),
}

/// What apply asks about a type. Built-ins use [`BuiltinSchema`]; a CRD's structural schema
/// will implement it too.
pub(crate) trait Schema {
    /// The list type of the list at `path` (field names from the root).
    fn list_type(&self, path: &[String]) -> ListType;
    /// Whether the object at `path` is atomic (replaced and owned as a whole).
    fn atomic_object(&self, path: &[String]) -> bool;
    /// The default of a list-map key field absent from an item, as upstream's schema has
    /// (`protocol: TCP` of ports).
    fn key_default(&self, _path: &[String], key: &str) -> Option<serde_json::Value> {
        (key == "protocol").then(|| serde_json::Value::String("TCP".into()))
    }
}

/// The built-in types of one kind.
pub(crate) struct BuiltinSchema {
    pub(crate) kind: &'static str,
}

fn last(path: &[String], n: usize) -> Option<&str> {
    path.len().checked_sub(n + 1).map(|i| path[i].as_str())
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

impl Schema for BuiltinSchema {
    fn list_type(&self, path: &[String]) -> ListType {
        let Some(field) = last(path, 0) else {
            return ListType::Atomic;
        };
        let parent = last(path, 1).unwrap_or("");
        match field {
            // ObjectMeta
            "finalizers" if parent == "metadata" => ListType::Set,
            "ownerReferences" if parent == "metadata" => ListType::Map(&["uid"]),
            // PodSpec
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "resourceClaims"
            | "schedulingGates"
                if parent == "spec" =>
            {
                ListType::Map(&["name"])
            }
            "hostAliases" if parent == "spec" => ListType::Map(&["ip"]),
            "topologySpreadConstraints" if parent == "spec" => {
                ListType::Map(&["topologyKey", "whenUnsatisfiable"])
            }
            // Container
            "ports" if CONTAINER_LISTS.contains(&parent) => {
                ListType::Map(&["containerPort", "protocol"])
            }
            "env" if CONTAINER_LISTS.contains(&parent) => ListType::Map(&["name"]),
            "volumeMounts" if CONTAINER_LISTS.contains(&parent) => ListType::Map(&["mountPath"]),
            "volumeDevices" if CONTAINER_LISTS.contains(&parent) => ListType::Map(&["devicePath"]),
            "resizePolicy" if CONTAINER_LISTS.contains(&parent) => ListType::Map(&["resourceName"]),
            // ServiceSpec
            "ports" if parent == "spec" && self.kind == "Service" => {
                ListType::Map(&["port", "protocol"])
            }
            // Status lists
            "conditions" if parent == "status" => ListType::Map(&["type"]),
            "podIPs" | "hostIPs" if parent == "status" => ListType::Map(&["ip"]),
            "addresses" if parent == "status" && self.kind == "Node" => ListType::Map(&["type"]),
            _ => ListType::Atomic,
        }
    }

    fn atomic_object(&self, path: &[String]) -> bool {
        let Some(field) = last(path, 0) else {
            return false;
        };
        let parent = last(path, 1).unwrap_or("");
        match field {
            // metav1.LabelSelector is atomic; the selectors of Services and
            // ReplicationControllers are plain string maps.
            "selector" => !matches!(self.kind, "Service" | "ReplicationController"),
            "podSelector" | "namespaceSelector" | "labelSelector" => true,
            // Atomic references.
            "configMapKeyRef" | "secretKeyRef" | "fieldRef" | "resourceFieldRef" => true,
            "nodeSelector" => parent == "requiredDuringSchedulingIgnoredDuringExecution",
            "roleRef" => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn list_types_follow_the_field_path() {
        let deploy = BuiltinSchema { kind: "Deployment" };
        assert_eq!(
            deploy.list_type(&p("spec.template.spec.containers")),
            ListType::Map(&["name"])
        );
        assert_eq!(
            deploy.list_type(&p("spec.template.spec.containers.ports")),
            ListType::Map(&["containerPort", "protocol"])
        );
        assert_eq!(
            deploy.list_type(&p("spec.template.spec.containers.args")),
            ListType::Atomic
        );
        assert_eq!(deploy.list_type(&p("metadata.finalizers")), ListType::Set);
        assert!(deploy.atomic_object(&p("spec.selector")));
        let svc = BuiltinSchema { kind: "Service" };
        assert_eq!(
            svc.list_type(&p("spec.ports")),
            ListType::Map(&["port", "protocol"])
        );
        assert!(!svc.atomic_object(&p("spec.selector")));
    }
}
