//! A workload end to end through `rk3s server` (the real binary): `kubectl create deployment`,
//! `kubectl rollout status`, `kubectl scale` up and down, with the scheduler and the controller
//! manager the server runs.
//!
//! There is no kubelet yet (it comes with a later issue): a **kubelet stand-in** plays its
//! part through the API only, with a node's own credentials — `rk3s agent` joins with the
//! server's token and writes `kubelet.kubeconfig` (`system:node:n1`), and the stand-in uses
//! nothing else, so the node authorizer and NodeRestriction decide what it may do, as for a
//! real kubelet. It registers Node `n1` and reports it Ready, marks every pod bound to `n1`
//! `Running` and `Ready` through `pods/status`, and finishes the deletion of its pods that are
//! terminating (what a kubelet does once their containers have stopped). No container runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Server, Setup, free_port, port_arg, rk3s_cmd};

const NODE: &str = "n1";
const AGENT_JOINED: &str = "the kubelet is not built yet, waiting for shutdown";

fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("stdin written");
    }
    child.wait_with_output().expect("kubectl finishes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The kubelet stand-in (see the module comment), until `stop`.
struct KubeletStandIn {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl KubeletStandIn {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl(&self.kubeconfig, &self.home, args, stdin)
    }

    /// `PUT <path>` of `object` (`kubectl replace --raw`): a node may update, not get, the
    /// status subresources (upstream's `system:node` rules), so it writes the whole object.
    fn put(&self, path: &str, object: &serde_json::Value) -> Output {
        self.kubectl(
            &["replace", "--raw", path, "-f", "-"],
            Some(&object.to_string()),
        )
    }

    fn register(&self) {
        let node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}},
        });
        let out = self.kubectl(&["create", "-f", "-"], Some(&node.to_string()));
        assert!(out.status.success(), "register: {}", text(&out.stderr));
        let out = self.kubectl(&["get", "node", NODE, "-o", "json"], None);
        assert!(out.status.success(), "get node: {}", text(&out.stderr));
        let mut node: serde_json::Value = serde_json::from_slice(&out.stdout).expect("node JSON");
        let now = k8s_now();
        node["status"] = serde_json::json!({
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet stand-in of the test",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
        });
        let out = self.put(&format!("/api/v1/nodes/{NODE}/status"), &node);
        assert!(out.status.success(), "node status: {}", text(&out.stderr));
    }

    /// One pass over the pods bound to the node.
    fn sync(&self) {
        let out = self.kubectl(
            &[
                "get",
                "pods",
                "-A",
                "--field-selector",
                &format!("spec.nodeName={NODE}"),
                "-o",
                "json",
            ],
            None,
        );
        if !out.status.success() {
            return; // the next pass retries
        }
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return;
        };
        for mut pod in list["items"].as_array().cloned().unwrap_or_default() {
            let ns = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                // The containers "stopped": the kubelet's final delete, with grace 0 (kubectl
                // sends 0 only with --force; alone, --grace-period=0 becomes 1).
                let _ = self.kubectl(
                    &[
                        "delete",
                        "pod",
                        "-n",
                        &ns,
                        &name,
                        "--force",
                        "--grace-period=0",
                        "--wait=false",
                    ],
                    None,
                );
            } else if pod["status"]["phase"] != "Running" {
                let now = k8s_now();
                let condition = |t: &str| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now});
                let statuses: Vec<serde_json::Value> = pod["spec"]["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "name": c["name"], "image": c["image"], "imageID": "",
                            "ready": true, "started": true, "restartCount": 0,
                            "state": {"running": {"startedAt": now}},
                        })
                    })
                    .collect();
                pod["status"] = serde_json::json!({
                    "phase": "Running",
                    "hostIP": "127.0.0.1",
                    "podIP": "10.42.0.10",
                    "startTime": now,
                    "conditions": [
                        condition("PodScheduled"),
                        condition("Initialized"),
                        condition("ContainersReady"),
                        condition("Ready"),
                    ],
                    "containerStatuses": statuses,
                });
                let _ = self.put(&format!("/api/v1/namespaces/{ns}/pods/{name}/status"), &pod);
            }
        }
    }
}

/// Now, as RFC 3339 UTC with seconds (`date -u`: the test crate has no time library).
fn k8s_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date runs");
    text(&out.stdout).trim().to_string()
}

#[test]
fn deployment_rolls_out_and_scales_with_a_kubelet_stand_in() {
    let setup = Setup::new("");
    let port = free_port().expect("free port");
    let (server, _) = Server::start(setup.server_cmd(&["--https-listen-port", &port_arg(port)]));
    let url = format!("https://127.0.0.1:{port}");

    // The node's credentials, the way a node gets them: `rk3s agent` with the server's token.
    let token = std::fs::read_to_string(setup.data_dir().join("server/token")).expect("token");
    let agent_data = setup.path("agent-data");
    let mut agent_cmd = rk3s_cmd(setup.dir.path());
    agent_cmd
        .arg("agent")
        .arg("--config")
        .arg(setup.path("config.yaml"))
        .arg("--data-dir")
        .arg(&agent_data)
        .args([
            "--server",
            &url,
            "--token",
            token.trim(),
            "--node-name",
            NODE,
        ]);
    let mut agent = Server::spawn(agent_cmd);
    agent.wait_for(AGENT_JOINED);
    let kubelet = KubeletStandIn {
        kubeconfig: agent_data.join("agent/kubelet.kubeconfig"),
        home: setup.dir.path().to_path_buf(),
    };
    let who = kubelet.kubectl(
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        None,
    );
    assert_eq!(text(&who.stdout), format!("system:node:{NODE}"));
    kubelet.register();
    let stop = Arc::new(AtomicBool::new(false));
    let standin = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                kubelet.sync();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let out = setup.kubectl_ok(
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox",
            "--replicas=2",
            "--",
            "sleep",
            "3600",
        ],
        "",
    );
    assert_eq!(out, "deployment.apps/web created\n");
    let rollout = |expect: &str| {
        let out = setup.kubectl(
            &["rollout", "status", "deployment/web", "--timeout=120s"],
            "",
        );
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "rollout status: {stdout}{}",
            text(&out.stderr)
        );
        assert!(stdout.trim_end().ends_with(expect), "{stdout}");
    };
    rollout("deployment \"web\" successfully rolled out");
    let pods = |setup: &Setup| {
        setup.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName}/{.status.phase} {end}",
            ],
            "",
        )
    };
    assert_eq!(pods(&setup), "n1/Running n1/Running ");

    let out = setup.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"], "");
    assert_eq!(out, "deployment.apps/web scaled\n");
    rollout("deployment \"web\" successfully rolled out");
    let ready = setup.kubectl_ok(
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.availableReplicas}/{.status.updatedReplicas}",
        ],
        "",
    );
    assert_eq!(ready, "3/3/3");

    // Down to one: the two pods go (the stand-in finishes their deletion, as a kubelet).
    setup.kubectl_ok(&["scale", "deployment", "web", "--replicas=1"], "");
    rollout("deployment \"web\" successfully rolled out");
    setup.wait_until("two pods of web gone", || {
        (pods(&setup) == "n1/Running ").then_some(())
    });

    stop.store(true, Ordering::Relaxed);
    standin.join().expect("stand-in thread");
    let (status, _) = agent.signal_within("-TERM", Duration::from_secs(60));
    assert!(status.success());
    let (status, log) = server.signal_within("-TERM", Duration::from_secs(60));
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}
