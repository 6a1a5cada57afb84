//! Bodies encoded with k8s-pb's prost messages (the same wire form client-go writes), read back
//! into JSON and compared with what the JSON form of the same object is upstream.

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::json;

use super::*;

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[test]
fn the_table_describes_the_served_kinds() {
    for (api_version, kind) in [
        ("v1", "Namespace"),
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "CronJob"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("storage.k8s.io/v1", "CSIDriver"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
        ("policy/v1", "Eviction"),
        ("autoscaling/v1", "Scale"),
        ("apps/v1", "DeleteOptions"),
    ] {
        assert!(
            TABLE.message_for(api_version, kind).is_some(),
            "{api_version} {kind}"
        );
    }
    assert_eq!(TABLE.message_for("v1", "Nope"), None);
    // Every message a field refers to is described.
    for (name, desc) in &TABLE.messages {
        for f in &desc.fields {
            if let Kind::Message(m) = f.kind {
                assert!(TABLE.messages.contains_key(m), "{name}.{} -> {m}", f.json);
            }
        }
    }
}

#[test]
fn a_namespace_as_kubectl_create_sends_it() {
    let ns = core::Namespace {
        metadata: Some(meta::ObjectMeta {
            name: s("team-a"),
            namespace: s(""),
            generate_name: s(""),
            labels: [("env".to_string(), String::new())].into(),
            creation_timestamp: Some(meta::Time {
                seconds: Some(-62_135_596_800),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        spec: Some(core::NamespaceSpec::default()),
        status: Some(core::NamespaceStatus {
            phase: s(""),
            ..Default::default()
        }),
    };
    let v = decode(&envelope("v1", "Namespace", ns.encode_to_vec())).expect("decodes");
    assert_eq!(
        v,
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            // Empty strings and Go's zero time are absent; an empty label value is not.
            "metadata": {"name": "team-a", "labels": {"env": ""}},
            "spec": {},
            "status": {},
        })
    );
}

#[test]
fn a_deployment_with_every_kind_of_field() {
    let container = core::Container {
        name: s("web"),
        image: s("busybox"),
        command: vec!["sleep".into(), "3600".into()],
        ports: vec![core::ContainerPort {
            container_port: Some(8080),
            protocol: s("TCP"),
            ..Default::default()
        }],
        resources: Some(core::ResourceRequirements {
            requests: [("cpu".to_string(), Quantity { string: s("250m") })].into(),
            ..Default::default()
        }),
        stdin: Some(false),
        tty: Some(true),
        ..Default::default()
    };
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: s("web"),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![container],
                    host_ipc: Some(true),
                    automount_service_account_token: Some(false),
                    volumes: vec![core::Volume {
                        name: s("data"),
                        volume_source: Some(core::VolumeSource {
                            empty_dir: Some(core::EmptyDirVolumeSource::default()),
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("25%"),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: s(""),
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let v = decode(&envelope(
        "apps/v1",
        "Deployment",
        deployment.encode_to_vec(),
    ))
    .expect("decodes");
    assert_eq!(
        v["spec"],
        json!({
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "busybox",
                        "command": ["sleep", "3600"],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "250m"}},
                        // Non-pointer booleans: absent at false, as upstream shows them.
                        "tty": true,
                    }],
                    "hostIPC": true,
                    "automountServiceAccountToken": false,
                    // VolumeSource is embedded in Volume: its fields are the volume's.
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1},
            },
        })
    );
    // And it is a valid typed object.
    let typed: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(v).expect("a typed Deployment");
    assert_eq!(typed.spec.expect("spec").replicas, Some(0));
    // The table of non-pointer fields names only fields that exist.
    for (message, fields) in OMIT_ZERO {
        let desc = TABLE
            .messages
            .get(message)
            .unwrap_or_else(|| panic!("{message}"));
        for f in *fields {
            assert!(desc.fields.iter().any(|d| d.json == *f), "{message}.{f}");
        }
    }
}

#[test]
fn bytes_times_and_negative_numbers() {
    let secret = core::Secret {
        metadata: Some(meta::ObjectMeta {
            name: s("s"),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        data: [("key".to_string(), b"\x00\xffhi".to_vec())].into(),
        r#type: s("Opaque"),
        ..Default::default()
    };
    let v = decode(&envelope("v1", "Secret", secret.encode_to_vec())).expect("decodes");
    assert_eq!(v["data"], json!({"key": "AP9oaQ=="}));
    assert_eq!(
        v["metadata"]["creationTimestamp"],
        json!("2023-11-14T22:13:20Z")
    );
    let event = core::Event {
        metadata: Some(meta::ObjectMeta {
            name: s("e"),
            ..Default::default()
        }),
        count: Some(-3),
        event_time: Some(meta::MicroTime {
            seconds: Some(1_700_000_000),
            nanos: Some(123_456_000),
        }),
        ..Default::default()
    };
    let v = decode(&envelope("v1", "Event", event.encode_to_vec())).expect("decodes");
    assert_eq!(v["count"], json!(-3));
    assert_eq!(v["eventTime"], json!("2023-11-14T22:13:20.123456Z"));
}

#[test]
fn list_wrappers_and_embedded_objects() {
    let review = k8s_pb::api::authorization::v1::SubjectAccessReview {
        metadata: None,
        spec: Some(k8s_pb::api::authorization::v1::SubjectAccessReviewSpec {
            user: s("alice"),
            extra: [(
                "scopes".to_string(),
                k8s_pb::api::authorization::v1::ExtraValue {
                    items: vec!["a".into(), "b".into()],
                },
            )]
            .into(),
            ..Default::default()
        }),
        status: None,
    };
    let v = decode(&envelope(
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        review.encode_to_vec(),
    ))
    .expect("decodes");
    assert_eq!(v["spec"]["extra"], json!({"scopes": ["a", "b"]}));

    let inner = envelope(
        "v1",
        "ConfigMap",
        core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: s("cm"),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let ext = |raw: Vec<u8>| k8s_pb::apimachinery::pkg::runtime::RawExtension { raw: Some(raw) };
    for raw in [
        inner,
        br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm"}}"#.to_vec(),
    ] {
        let revision = apps::ControllerRevision {
            metadata: Some(meta::ObjectMeta {
                name: s("r"),
                ..Default::default()
            }),
            data: Some(ext(raw)),
            revision: Some(2),
        };
        let v = decode(&envelope(
            "apps/v1",
            "ControllerRevision",
            revision.encode_to_vec(),
        ))
        .expect("decodes");
        assert_eq!(
            v["data"],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}})
        );
        assert_eq!(v["revision"], json!(2));
    }
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    assert_eq!(decode(b"{}"), Err(ProtobufError::NoMagic));
    assert_eq!(decode(b"k8s\0"), Err(ProtobufError::NoTypeMeta));
    let ns = core::Namespace::default().encode_to_vec();
    assert!(matches!(
        decode(&envelope("v1", "Frobnicator", ns.clone())),
        Err(ProtobufError::UnknownKind { .. })
    ));
    // A length that runs past the end.
    let mut truncated = envelope("v1", "Namespace", vec![0x0a, 0x10, 0x0a]);
    assert!(matches!(
        decode(&truncated),
        Err(ProtobufError::Malformed(_))
    ));
    // A string field sent as a varint.
    truncated = envelope("v1", "Namespace", vec![0x0a, 0x02, 0x08, 0x01]);
    assert!(matches!(
        decode(&truncated),
        Err(ProtobufError::WireType { .. })
    ));
    // Every prefix of a valid body fails cleanly or decodes.
    let body = envelope(
        "apps/v1",
        "Deployment",
        apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: s("x"),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    for end in 0..body.len() {
        let _ = decode(&body[..end]);
    }
}

#[test]
fn go_durations() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500_000_000), "1.5s");
    assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
    assert_eq!(go_duration(120_000_000_000), "2m0s");
    assert_eq!(go_duration(2_000_000), "2ms");
    assert_eq!(go_duration(-1_000_000_000), "-1s");
}
