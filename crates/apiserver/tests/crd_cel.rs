//! Kubernetes' CEL libraries in CRD validation rules, through kube-rs: `quantity`, `url`,
//! `ip`/`cidr`, the lists library (`isSorted`), `date-time`/`duration`-formatted strings as
//! timestamps and durations, `optionalOldSelf`, and the compile-time checks (`undefined field`,
//! ill-typed rules, result types) — objects and CRDs accepted and refused with upstream's
//! messages.

mod common;

use std::time::Duration;

use common::{TestServer, invalid_causes};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

fn network_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "networks.cel.example.com"},
        "spec": {
            "group": "cel.example.com",
            "scope": "Namespaced",
            "names": {"plural": "networks", "kind": "Network"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object", "properties": {
                    "memory": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "isQuantity(self) && quantity(self).isLessThan(quantity('1Gi'))",
                         "message": "memory must be a quantity below 1Gi"}]},
                    "cpu": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "quantity(self).compareTo(quantity('100m')) >= 0"}]},
                    "endpoint": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "isURL(self) && url(self).getScheme() == 'https' && url(self).getHostname().endsWith('.example.com')",
                         "message": "endpoint must be an https URL of example.com"}]},
                    "gateway": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "ip(self).family() == 4 && !ip(self).isLoopback()",
                         "message": "gateway must be an IPv4 address, not loopback"}]},
                    "podCIDR": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "isCIDR(self) && cidr('10.0.0.0/8').containsCIDR(self) && cidr(self).prefixLength() <= 24",
                         "message": "podCIDR must be a /24 or larger inside 10.0.0.0/8"}]},
                    "priorities": {"type": "array", "items": {"type": "integer"},
                        "x-kubernetes-validations": [
                            {"rule": "self.isSorted()", "message": "priorities must be sorted"}]},
                    "window": {"type": "object",
                        "x-kubernetes-validations": [
                            {"rule": "self.end > self.start && self.end - self.start <= self.maxLength",
                             "message": "window must end after its start, within maxLength"}],
                        "properties": {
                            "start": {"type": "string", "format": "date-time"},
                            "end": {"type": "string", "format": "date-time"},
                            "maxLength": {"type": "string", "format": "duration"}}},
                    "owner": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "!oldSelf.hasValue() || self == oldSelf.value()",
                         "optionalOldSelf": true, "message": "owner is immutable once set"}]},
                }}},
            }}}],
        },
    }))
    .expect("CRD")
}

async fn install(client: &kube::Client, crd: &CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), crd)
        .await
        .expect("create CRD");
    let name = crd.metadata.name.clone().expect("name");
    let established = kube::runtime::wait::await_condition(
        crds,
        &name,
        kube::runtime::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(20), established)
        .await
        .expect("CRD established in time")
        .expect("wait");
}

fn networks(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cel.example.com", "v1", "Network");
    Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "networks"),
    )
}

fn network(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "cel.example.com/v1", "kind": "Network",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("network")
}

fn good_spec() -> Value {
    json!({
        "memory": "512Mi",
        "cpu": "250m",
        "endpoint": "https://api.example.com:8443/v1",
        "gateway": "10.0.0.1",
        "podCIDR": "10.1.0.0/16",
        "priorities": [1, 2, 2, 5],
        "window": {"start": "2024-02-29T10:00:00Z", "end": "2024-02-29T12:00:00+01:00",
                   "maxLength": "2h"},
        "owner": "alice",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_cel_libraries_accept_and_refuse_like_upstream() {
    let t = TestServer::start().await;
    let client = t.client().await;
    install(&client, &network_crd()).await;
    let api = networks(&client);

    api.create(&PostParams::default(), &network("good", good_spec()))
        .await
        .expect("a valid network");

    let bad = json!({
        "memory": "2Gi",
        "cpu": "lots",
        "endpoint": "http://api.example.com/",
        "gateway": "127.0.0.1",
        "podCIDR": "192.168.0.0/16",
        "priorities": [3, 1],
        "window": {"start": "2024-02-29T10:00:00Z", "end": "2024-03-01T10:00:01Z",
                   "maxLength": "1 day"},
    });
    let err = api
        .create(&PostParams::default(), &network("bad", bad))
        .await
        .expect_err("refused");
    let mut got = invalid_causes(err);
    got.sort();
    assert_eq!(
        got,
        [
            "spec.cpu: Invalid value: \"string\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' evaluating rule: quantity(self).compareTo(quantity('100m')) >= 0",
            "spec.endpoint: Invalid value: \"string\": endpoint must be an https URL of example.com",
            "spec.gateway: Invalid value: \"string\": gateway must be an IPv4 address, not loopback",
            "spec.memory: Invalid value: \"string\": memory must be a quantity below 1Gi",
            "spec.podCIDR: Invalid value: \"string\": podCIDR must be a /24 or larger inside 10.0.0.0/8",
            "spec.priorities: Invalid value: \"array\": priorities must be sorted",
            "spec.window: Invalid value: \"object\": window must end after its start, within maxLength",
        ]
    );

    // A library function given bad input fails the rule with its error, as upstream (which
    // names the rule by its message when it has one).
    let mut spec = good_spec();
    spec["gateway"] = json!("10.0.0");
    let err = api
        .create(&PostParams::default(), &network("badip", spec))
        .await
        .expect_err("refused");
    assert_eq!(
        invalid_causes(err),
        [
            "spec.gateway: Invalid value: \"string\": IP Address \"10.0.0\" parse error during conversion from string: ParseAddr(\"10.0.0\"): IPv4 address too short evaluating rule: gateway must be an IPv4 address, not loopback"
        ]
    );

    // `optionalOldSelf`: evaluated on create (oldSelf is `optional.none()`) and on update.
    let err = api
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"owner": "bob"}})),
        )
        .await
        .expect_err("owner is immutable");
    assert_eq!(
        invalid_causes(err),
        ["spec.owner: Invalid value: \"string\": owner is immutable once set"]
    );
    api.patch(
        "good",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"memory": "256Mi"}})),
    )
    .await
    .expect("other fields may change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_selecting_undeclared_fields_do_not_compile() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let mut crd = network_crd();
    crd.metadata.name = Some("gadgets.cel.example.com".into());
    crd.spec.names.plural = "gadgets".into();
    crd.spec.names.kind = "Gadget".into();
    let mut schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    schema["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] = json!([{"rule": "self.window.nosuch == 1"}, {"rule": "self.window.start < self.window.end"}]);
    crd.spec.versions[0].schema = serde_json::from_value(schema).expect("schema");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let err = crds
        .create(&PostParams::default(), &crd)
        .await
        .expect_err("refused");
    let got = invalid_causes(err);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0],
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.window.nosuch == 1\", Message:\"\", MessageExpression:\"\", Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}: compilation failed: ERROR: <input>:1:12: undefined field 'nosuch'\n | self.window.nosuch == 1\n | ...........^"
    );
}

/// A CRD whose `spec` carries `rules` (with `replicas` an integer, `name` a string, `items`
/// a list of strings and `window` timestamps and a duration).
fn typed_crd(name: &str, rules: Value) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}s.typed.example.com", name.to_lowercase())},
        "spec": {
            "group": "typed.example.com",
            "scope": "Namespaced",
            "names": {"plural": format!("{}s", name.to_lowercase()), "kind": name},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object",
                    "x-kubernetes-validations": rules,
                    "properties": {
                        "replicas": {"type": "integer"},
                        "ratio": {"type": "number"},
                        "name": {"type": "string"},
                        // Bounded: iterating an unbounded list twice costs 2.2 times
                        // upstream's per-rule budget.
                        "items": {"type": "array", "maxItems": 100, "items": {"type": "string"}},
                        "start": {"type": "string", "format": "date-time"},
                        "grace": {"type": "string", "format": "duration"},
                        "port": {"x-kubernetes-int-or-string": true},
                }}},
            }}}],
        },
    }))
    .expect("CRD")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ill_typed_rules_do_not_compile_and_well_typed_ones_do() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = typed_crd(
        "Sprocket",
        json!([
            {"rule": "self.replicas > 'a'"},
            {"rule": "self.items.all(x, x > 1)"},
            {"rule": "self.name.size()"},
            {"rule": "self.replicas > 0", "messageExpression": "self.replicas"},
        ]),
    );
    let err = crds
        .create(&PostParams::default(), &crd)
        .await
        .expect_err("refused");
    let at = "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations";
    let repr = |rule: &str, message_expression: &str| {
        format!(
            "apiextensions.ValidationRule{{Rule:{rule:?}, Message:\"\", MessageExpression:{message_expression:?}, Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:\"\", OptionalOldSelf:(*bool)(nil)}}"
        )
    };
    assert_eq!(
        invalid_causes(err),
        [
            format!(
                "{at}[0].rule: Invalid value: {}: compilation failed: ERROR: <input>:1:15: found no matching overload for '_>_' applied to '(int, string)'\n | self.replicas > 'a'\n | ..............^",
                repr("self.replicas > 'a'", "")
            ),
            format!(
                "{at}[1].rule: Invalid value: {}: compilation failed: ERROR: <input>:1:21: found no matching overload for '_>_' applied to '(string, int)'\n | self.items.all(x, x > 1)\n | ....................^",
                repr("self.items.all(x, x > 1)", "")
            ),
            format!(
                "{at}[2].rule: Invalid value: {}: cel expression must evaluate to a bool",
                repr("self.name.size()", "")
            ),
            format!(
                "{at}[3].messageExpression: Invalid value: {}: messageExpression must evaluate to a string",
                repr("self.replicas > 0", "self.replicas")
            ),
        ]
    );

    let crd = typed_crd(
        "Cog",
        json!([
            {"rule": "self.replicas < 1.5 && self.ratio > 1 && self.replicas * 2 <= 10"},
            {"rule": "self.items.all(x, x.size() > 1) && self.items.map(x, x.size()).sum() < 100"},
            {"rule": "self.start + self.grace > self.start && self.grace > duration('1s')"},
            {"rule": "self.port == 80 || self.port == 'http'"},
            {"rule": "self.?name.orValue('') != 'root' && has(self.items)",
             "messageExpression": "'bad name: ' + self.name"},
            {"rule": "oldSelf.hasValue() ? self.replicas >= oldSelf.value().replicas : true",
             "optionalOldSelf": true},
        ]),
    );
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("well-typed rules are accepted");
}

fn tagged_crd(name: &str, list_bounds: Value, string_bounds: Value) -> CustomResourceDefinition {
    let mut tags = json!({"type": "array", "items": {"type": "string"},
        "x-kubernetes-validations": [{"rule": "self.all(x, x.matches('^[a-z]+$'))"}]});
    let mut ids = json!({"type": "array", "items": {"type": "integer"},
        "x-kubernetes-validations": [{"rule": "self.all(a, self.all(b, a != b))"}]});
    for list in [&mut tags, &mut ids] {
        if let (Some(l), Some(b)) = (list.as_object_mut(), list_bounds.as_object()) {
            l.extend(b.clone());
        }
    }
    if let (Some(items), Some(b)) = (tags["items"].as_object_mut(), string_bounds.as_object()) {
        items.extend(b.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}s.cost.example.com", name.to_lowercase())},
        "spec": {
            "group": "cost.example.com",
            "scope": "Namespaced",
            "names": {"plural": format!("{}s", name.to_lowercase()), "kind": name},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object",
                    "properties": {"tags": tags, "ids": ids}}},
            }}}],
        },
    }))
    .expect("CRD")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_iterating_unbounded_lists_cost_too_much() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let err = crds
        .create(
            &PostParams::default(),
            &tagged_crd("Label", json!({}), json!({})),
        )
        .await
        .expect_err("refused");
    let root = "spec.versions[0].schema.openAPIV3Schema";
    let at = format!("{root}.properties[spec].properties");
    let hint = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";
    let contributed = "Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema";
    assert_eq!(
        invalid_causes(err),
        [
            format!(
                "{at}[ids].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x {hint}"
            ),
            format!(
                "{at}[tags].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x {hint}"
            ),
            format!("{at}[ids].x-kubernetes-validations[0].rule: {contributed}"),
            format!("{at}[tags].x-kubernetes-validations[0].rule: {contributed}"),
            format!(
                "{root}: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x {hint}"
            ),
        ]
    );

    // Bounded, the same rules are cheap, and they still validate.
    let crd = tagged_crd("Badge", json!({"maxItems": 10}), json!({"maxLength": 16}));
    install(&client, &crd).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cost.example.com", "v1", "Badge"),
        "badges",
    );
    let badges: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let badge = |name: &str, tags: Value, ids: Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "cost.example.com/v1", "kind": "Badge",
            "metadata": {"name": name}, "spec": {"tags": tags, "ids": ids}}))
        .expect("object")
    };
    badges
        .create(
            &PostParams::default(),
            &badge("ok", json!(["a", "b"]), json!([])),
        )
        .await
        .expect("valid badge");
    let err = badges
        .create(
            &PostParams::default(),
            &badge("bad", json!(["A"]), json!([])),
        )
        .await
        .expect_err("refused");
    assert_eq!(
        invalid_causes(err),
        ["spec.tags: Invalid value: \"array\": failed rule: self.all(x, x.matches('^[a-z]+$'))"]
    );
}
