//! CustomResourceDefinitions driven by the real kubectl: apply a CRD, wait for it, create and
//! list custom resources with printer columns and short names, `api-resources`, `explain`,
//! validation errors, deletion.

mod common;

use common::TestServer;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Spec
      type: string
      jsonPath: .spec.cronSpec
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the cron tab runs.
            properties:
              cronSpec:
                type: string
                description: The schedule, in cron format.
              image:
                type: string
              replicas:
                type: integer
                minimum: 1
                maximum: 10
                default: 1
"#;

const CR: &str = r#"
apiVersion: stable.example.com/v1
kind: CronTab
metadata:
  name: my-cron
spec:
  cronSpec: "* * * * */5"
  image: my-cron-image
  replicas: 3
"#;

async fn install(t: &TestServer) {
    t.kubectl_stdin(&["apply", "-f", "-"], CRD).await;
    t.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=20s",
        "crd/crontabs.stable.example.com",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_serves_custom_resources() {
    let t = TestServer::start().await;
    install(&t).await;

    let crds = t.kubectl_ok(&["get", "crds"]).await;
    let header: Vec<&str> = crds
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "CREATED", "AT"]);
    assert!(crds.contains("crontabs.stable.example.com"), "{crds}");

    let out = t.kubectl_stdin(&["apply", "-f", "-"], CR).await;
    assert!(
        out.status.success(),
        "apply CR: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Printer columns, by plural, singular and short name.
    let table = t.kubectl_ok(&["get", "crontabs"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"]);
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(&row[..2], ["my-cron", "*"], "{table}");
    assert!(table.contains("* * * * */5"), "{table}");
    assert!(row.contains(&"3"), "{table}");
    assert_eq!(
        t.kubectl_ok(&["get", "ct", "-o", "name"]).await.trim(),
        "crontab.stable.example.com/my-cron"
    );
    assert!(
        t.kubectl_ok(&["get", "crontab", "my-cron", "-o", "jsonpath={.spec.image}"])
            .await
            .contains("my-cron-image")
    );
    // The `all` category includes it.
    let all = t.kubectl_ok(&["get", "all", "-o", "name"]).await;
    assert!(all.contains("crontab.stable.example.com/my-cron"), "{all}");

    // Re-apply a change (merge patch for custom resources), label, and edit through patch.
    let changed = CR.replace("replicas: 3", "replicas: 4");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &changed).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.kubectl_ok(&["label", "ct", "my-cron", "tier=batch"])
        .await;
    let got = t
        .kubectl_ok(&[
            "get",
            "ct",
            "-l",
            "tier=batch",
            "-o",
            "jsonpath={.items[0].spec.replicas}",
        ])
        .await;
    assert_eq!(got, "4");

    // Custom resources are replaced only at a known version, as upstream's (`kubectl
    // replace -f` would fill in the version it reads first).
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("cr.json");
    std::fs::write(
        &body,
        r#"{"apiVersion":"stable.example.com/v1","kind":"CronTab","metadata":{"name":"my-cron"},"spec":{"replicas":5}}"#,
    )
    .expect("write");
    let out = t
        .kubectl(&[
            "replace",
            "--raw",
            "/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron",
            "-f",
            body.to_str().expect("utf-8 path"),
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"The crontabs "my-cron" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"#),
        "{err}"
    );

    // kubectl scale goes through the scale subresource.
    t.kubectl_ok(&["scale", "ct", "my-cron", "--replicas=6"])
        .await;
    assert_eq!(
        t.kubectl_ok(&["get", "ct", "my-cron", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "6"
    );
    let out = t
        .kubectl(&["scale", "ct", "my-cron", "--replicas=11"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.replicas in body should be less than or equal to 10"),
        "{err}"
    );
    // A strategic merge patch is refused for custom resources, as upstream.
    let out = t
        .kubectl(&[
            "patch",
            "ct",
            "my-cron",
            "--type=strategic",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("UnsupportedMediaType") || err.contains("unknown format"),
        "{err}"
    );

    // Validation errors as upstream prints them.
    let bad = CR
        .replace("my-cron", "bad-cron")
        .replace("replicas: 3", "replicas: \"three\"");
    let out = t.kubectl_stdin(&["create", "-f", "-"], &bad).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "The CronTab \"bad-cron\" is invalid: spec.replicas: Invalid value: \"string\": \
             spec.replicas in body must be of type integer: \"string\""
        ),
        "{err}"
    );

    // Discovery and explain.
    let resources = t
        .kubectl_ok(&["api-resources", "--api-group=stable.example.com"])
        .await;
    let line = resources
        .lines()
        .find(|l| l.starts_with("crontabs"))
        .unwrap_or_else(|| panic!("crontabs listed: {resources}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols,
        ["crontabs", "ct", "stable.example.com/v1", "true", "CronTab"]
    );
    let explain = t.kubectl_ok(&["explain", "crontab.spec"]).await;
    assert!(explain.contains("cronSpec"), "{explain}");
    assert!(
        explain.contains("The schedule, in cron format."),
        "{explain}"
    );

    // Deleting the CRD removes its custom resources and the resource type.
    t.kubectl_ok(&["delete", "crd", "crontabs.stable.example.com"])
        .await;
    let left = t
        .store
        .list(
            b"/registry/stable.example.com/crontabs/",
            rk3s_datastore::ListOptions::default(),
        )
        .await
        .expect("list");
    assert!(left.kvs.is_empty());
    // kubectl may still have the type in its discovery cache (then the list is a 404),
    // or have refreshed it (then it does not know the type); both mean "not served".
    let out = t.kubectl(&["get", "crontabs"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the server doesn't have a resource type \"crontabs\"")
            || err.contains("the server could not find the requested resource"),
        "{err}"
    );
    let resources = t.kubectl_ok(&["api-resources"]).await;
    assert!(!resources.contains("crontabs"), "{resources}");
}

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.net
spec:
  group: example.net
  scope: Namespaced
  names:
    plural: gadgets
    singular: gadget
    kind: Gadget
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    schema:
      openAPIV3Schema:
        type: object
        description: A gadget, for testing.
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: self.replicas <= self.maxReplicas
              message: replicas must not exceed maxReplicas
            properties:
              replicas:
                type: integer
              maxReplicas:
                type: integer
                description: The most replicas the gadget may have.
              owner:
                type: string
                format: email
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    port: {type: integer}
          status:
            type: object
            properties:
              replicas: {type: integer}
"#;

fn gadget(spec: &str) -> String {
    format!(
        "apiVersion: example.net/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_validates_custom_resources_and_crds() {
    let t = TestServer::start().await;

    // A CRD whose CEL rule does not compile, or whose schema is not structural, is refused.
    let bad_rule = GADGET_CRD.replace("self.replicas <= self.maxReplicas", "self.replicas <=");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &bad_rule).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{Rule:\"self.replicas <=\""
        ),
        "{err}"
    );
    assert!(
        err.contains("compilation failed: ERROR: <input>:1:"),
        "{err}"
    );
    let no_type = GADGET_CRD.replace(
        "              replicas:\n                type: integer\n              maxReplicas",
        "              replicas:\n                description: none\n              maxReplicas",
    );
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &no_type).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[replicas].type: Required value: must not be empty for specified object fields"),
        "{err}"
    );

    t.kubectl_stdin(&["apply", "-f", "-"], GADGET_CRD).await;
    t.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=20s",
        "crd/gadgets.example.net",
    ])
    .await;

    // CEL: accepted, then refused with the rule's message.
    let ok = gadget("replicas: 1\nmaxReplicas: 2\nowner: ops@example.net");
    let out = t.kubectl_stdin(&["create", "-f", "-"], &ok).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t
        .kubectl(&[
            "patch",
            "gadget",
            "g1",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":5}}"#,
        ])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("The Gadget \"g1\" is invalid: spec: Invalid value: \"object\": replicas must not exceed maxReplicas"),
        "{err}"
    );

    // format and list-map keys.
    let out = t
        .kubectl(&[
            "patch",
            "gadget",
            "g1",
            "--type=merge",
            "-p",
            r#"{"spec":{"owner":"nobody"}}"#,
        ])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.owner: Invalid value: \"nobody\": spec.owner in body must be of type email: \"nobody\""),
        "{err}"
    );
    let out = t
        .kubectl(&[
            "patch",
            "gadget",
            "g1",
            "--type=merge",
            "-p",
            r#"{"spec":{"ports":[{"name":"http","port":80},{"name":"http","port":81}]}}"#,
        ])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ports[1]: Duplicate value: map[string]interface {}{\"name\":\"http\"}"),
        "{err}"
    );

    // kubectl's strict validation refuses an unknown field.
    let unknown = gadget("replicas: 1\nmaxReplicas: 2\nbogus: true").replace("g1", "g2");
    let out = t
        .kubectl_stdin(&["apply", "--validate=strict", "-f", "-"], &unknown)
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");

    // explain, from the published schema.
    let explain = t.kubectl_ok(&["explain", "gadgets"]).await;
    assert!(explain.contains("A gadget, for testing."), "{explain}");
    let explain = t.kubectl_ok(&["explain", "gadget.spec.maxReplicas"]).await;
    assert!(
        explain.contains("The most replicas the gadget may have."),
        "{explain}"
    );
    // OpenAPI v2 and v3 carry the type and its subresources.
    let v2 = t.kubectl_ok(&["get", "--raw", "/openapi/v2"]).await;
    assert!(v2.contains("\"net.example.v1.Gadget\""), "v2 definition");
    assert!(v2.contains("/apis/example.net/v1/namespaces/{namespace}/gadgets/{name}/status"));
    assert!(v2.contains("/apis/example.net/v1/namespaces/{namespace}/gadgets/{name}/scale"));
    let v3 = t
        .kubectl_ok(&["get", "--raw", "/openapi/v3/apis/example.net/v1"])
        .await;
    assert!(v3.contains("/apis/example.net/v1/namespaces/{namespace}/gadgets/{name}/scale"));
    // Deleting the CRD takes it out of /openapi/v2 again.
    t.kubectl_ok(&["delete", "crd", "gadgets.example.net"])
        .await;
    let mut gone = false;
    for _ in 0..100 {
        if !t
            .kubectl_ok(&["get", "--raw", "/openapi/v2"])
            .await
            .contains("net.example.v1.Gadget")
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "v2 updated after the CRD was deleted");
}
