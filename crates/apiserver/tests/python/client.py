"""The official Kubernetes Python client against an rk3s apiserver.

Run by tests/python_client.rs: `python client.py <kubeconfig>`; any failed assertion or
unexpected API error exits non-zero with a traceback.
"""

import json
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()


def api_error(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ApiException as e:
        return e.status, json.loads(e.body)
    raise AssertionError(f"{call.__name__} succeeded")


# Discovery and version (the client asks for /version/, /api/, /apis/).
version = client.VersionApi().get_code()
assert version.major == "1", version
assert "v1" in client.CoreApi().get_api_versions().versions
groups = [g.name for g in client.ApisApi().get_api_versions().groups]
assert "apps" in groups and "batch" in groups, groups
resources = [r.name for r in apps.get_api_resources().resources]
assert "deployments/scale" in resources, resources

# Typed CRUD, pagination and label selectors.
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
for i in range(5):
    core.create_namespaced_config_map(
        "py",
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"cm{i}", labels={"i": str(i)}),
            data={"k": str(i)},
        ),
    )
first = core.list_namespaced_config_map("py", limit=2)
assert [c.metadata.name for c in first.items] == ["cm0", "cm1"], first.items
assert first.metadata.remaining_item_count == 3, first.metadata
rest = core.list_namespaced_config_map("py", limit=10, _continue=first.metadata._continue)
assert [c.metadata.name for c in rest.items] == ["cm2", "cm3", "cm4"], rest.items
picked = core.list_namespaced_config_map("py", label_selector="i in (1,3)")
assert [c.metadata.name for c in picked.items] == ["cm1", "cm3"], picked.items

# Errors are Status objects the client decodes.
status, body = api_error(
    core.create_namespaced_config_map,
    "py",
    client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm0")),
)
assert status == 409 and body["reason"] == "AlreadyExists", body
status, body = api_error(
    core.create_namespaced_config_map,
    "py",
    client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")),
)
assert status == 422 and body["reason"] == "Invalid", body
assert body["details"]["causes"][0]["field"] == "metadata.name", body
status, body = api_error(core.read_namespaced_config_map, "missing", "py")
assert status == 404 and body["reason"] == "NotFound", body

# Optimistic concurrency: a stale resourceVersion is a conflict.
cm = core.read_namespaced_config_map("cm1", "py")
stale = cm.metadata.resource_version
cm.data["k"] = "changed"
core.replace_namespaced_config_map("cm1", "py", cm)
cm.metadata.resource_version = stale
status, body = api_error(core.replace_namespaced_config_map, "cm1", "py", cm)
assert status == 409 and body["reason"] == "Conflict", body

# Patches: a dict is a strategic merge patch for built-in types, a list a JSON patch.
patched = core.patch_namespaced_config_map("cm2", "py", {"data": {"x": "y"}})
assert patched.data == {"k": "2", "x": "y"}, patched.data
patched = core.patch_namespaced_config_map(
    "cm2", "py", [{"op": "remove", "path": "/data/x"}]
)
assert patched.data == {"k": "2"}, patched.data

# A Deployment gets upstream's defaults; the scale subresource.
deployment = apps.create_namespaced_deployment(
    "py",
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    },
)
assert deployment.spec.strategy.type == "RollingUpdate", deployment.spec.strategy
container = deployment.spec.template.spec.containers[0]
assert container.image_pull_policy == "Always", container
assert container.termination_message_path == "/dev/termination-log", container
scale = apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 3}})
assert scale.spec.replicas == 3, scale
assert apps.read_namespaced_deployment("web", "py").spec.replicas == 3

# A Service gets a cluster IP and a node port.
service = core.create_namespaced_service(
    "py",
    {"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}},
)
assert service.spec.cluster_ip and service.spec.ports[0].node_port, service.spec

# Watch from a resourceVersion: the changes after it, in order.
since = core.list_namespaced_config_map("py").metadata.resource_version


def change_later():
    time.sleep(0.5)
    core.patch_namespaced_config_map("cm3", "py", {"data": {"w": "1"}})
    core.delete_namespaced_config_map("cm4", "py")


threading.Thread(target=change_later).start()
seen = []
w = watch.Watch()
for event in w.stream(
    core.list_namespaced_config_map, "py", resource_version=since, timeout_seconds=20
):
    seen.append((event["type"], event["object"].metadata.name))
    if event["type"] == "DELETED":
        w.stop()
assert seen == [("MODIFIED", "cm3"), ("DELETED", "cm4")], seen

# Custom resources through CustomObjectsApi.
client.ApiextensionsV1Api().create_custom_resource_definition(
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com"},
        "spec": {
            "group": "stable.example.com",
            "scope": "Namespaced",
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "cronSpec": {"type": "string"},
                                        "replicas": {"type": "integer", "default": 1},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
)
custom = client.CustomObjectsApi()
crontab = {
    "apiVersion": "stable.example.com/v1",
    "kind": "CronTab",
    "metadata": {"name": "tab"},
    "spec": {"cronSpec": "* * * * */5", "unknown": "pruned"},
}
for _ in range(100):
    try:
        made = custom.create_namespaced_custom_object(
            "stable.example.com", "v1", "py", "crontabs", crontab
        )
        break
    except ApiException as e:
        if e.status != 404:
            raise
        time.sleep(0.1)
else:
    raise AssertionError("the CRD was not served in time")
assert made["spec"] == {"cronSpec": "* * * * */5", "replicas": 1}, made
listed = custom.list_namespaced_custom_object("stable.example.com", "v1", "py", "crontabs")
assert [o["metadata"]["name"] for o in listed["items"]] == ["tab"], listed

# Deleting the namespace: Terminating first, as upstream.
core.delete_namespace("py")
assert core.read_namespace("py").status.phase == "Terminating"
print("python client: all checks passed")
