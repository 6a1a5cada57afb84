//! The security side of upstream v1.33's `ValidatePodSpec`: the pod's `securityContext`
//! (`validatePodSpecSecurityContext`: user and group IDs, `shareProcessNamespace` with
//! `hostPID`, sysctls — names, duplicates, namespaced sysctls of a host-network/host-IPC
//! pod —, `fsGroupChangePolicy`, `supplementalGroupsPolicy`, `seLinuxChangePolicy`, seccomp,
//! AppArmor and Windows options), each container's `securityContext`
//! (`ValidateSecurityContext`: IDs, `procMount`, seccomp, `allowPrivilegeEscalation: false`
//! with `privileged` or `CAP_SYS_ADMIN`, Windows options, AppArmor), `hostUsers: false` with
//! host namespaces, Windows host-process pods, and `os.name` with the fields each OS forbids.
//!
//! Privileged containers are allowed (K3s runs the apiserver with `--allow-privileged`).
//! Values upstream prints as Go structs with `%#v` (a whole security context or seccomp
//! profile) show set pointers by value where upstream shows an address.

use serde_json::Value;

use super::super::{
    NameRule, dns_problems, duplicate, forbidden, invalid, not_supported, q, required, str_of,
    too_long,
};
use super::list;
use super::volumes::local_descending_path;
use crate::status::Cause;

/// Upstream's `IsValidUserID`/`IsValidGroupID`.
pub(in crate::validation) fn id_problems(id: i64) -> Option<String> {
    (!(0..=i64::from(i32::MAX)).contains(&id))
        .then(|| format!("must be between 0 and {}, inclusive", i32::MAX))
}

fn ids(sc: &Value, fields: &[&str], path: &str, causes: &mut Vec<Cause>) {
    for f in fields {
        if let Some(id) = sc.get(*f).and_then(Value::as_i64)
            && let Some(m) = id_problems(id)
        {
            causes.push(invalid(format!("{path}.{f}"), &id.to_string(), &m));
        }
    }
}

/// A value upstream shows by dereferencing a pointer (`%v`/`%q`).
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => q(s),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// `validatePodSpecSecurityContext` and the pod-level rules around it.
pub(super) fn pod_security(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let fld = format!("{path}.securityContext");
    if let Some(sc) = spec.get("securityContext").filter(|v| v.is_object()) {
        ids(
            sc,
            &["fsGroup", "runAsUser", "runAsGroup"],
            &fld,
            &mut causes,
        );
        for (g, gid) in list(sc, "supplementalGroups").iter().enumerate() {
            if let Some(gid) = gid.as_i64()
                && let Some(m) = id_problems(gid)
            {
                causes.push(invalid(
                    format!("{fld}.supplementalGroups[{g}]"),
                    &gid.to_string(),
                    &m,
                ));
            }
        }
        let host_pid = spec.get("hostPID").and_then(Value::as_bool) == Some(true);
        if host_pid && spec.get("shareProcessNamespace").and_then(Value::as_bool) == Some(true) {
            causes.push(invalid(
                format!("{fld}.shareProcessNamespace"),
                "true",
                "ShareProcessNamespace and HostPID cannot both be enabled",
            ));
        }
        causes.extend(sysctls(spec, sc, &format!("{fld}.sysctls")));
        for (field, valid) in [
            ("fsGroupChangePolicy", &["Always", "OnRootMismatch"][..]),
            ("supplementalGroupsPolicy", &["Merge", "Strict"][..]),
            ("seLinuxChangePolicy", &["MountOption", "Recursive"][..]),
        ] {
            if let Some(v) = sc.get(field).filter(|v| !v.is_null()) {
                let s = v.as_str().unwrap_or("");
                if !valid.contains(&s) {
                    causes.push(not_supported(format!("{fld}.{field}"), &q(s), valid));
                }
            }
        }
        causes.extend(seccomp(
            sc.get("seccompProfile"),
            &format!("{fld}.seccompProfile"),
        ));
        causes.extend(windows_options(
            sc.get("windowsOptions"),
            &format!("{fld}.windowsOptions"),
        ));
        causes.extend(app_armor(
            sc.get("appArmorProfile"),
            &format!("{fld}.appArmorProfile"),
        ));
    }
    causes.extend(host_process(spec, path));
    causes.extend(host_users(spec, path));
    causes
}

/// Whether the pod shares the host's user namespace (`hostUsers` unset or true).
pub(super) fn host_users_on(spec: &Value) -> bool {
    spec.get("hostUsers").and_then(Value::as_bool) != Some(false)
}

/// `validateHostUsers` (upstream's own capitalised `HostPID`/`HostIPC` paths).
fn host_users(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if host_users_on(spec) {
        return causes;
    }
    for (field, shown) in [
        ("hostNetwork", "hostNetwork"),
        ("hostPID", "HostPID"),
        ("hostIPC", "HostIPC"),
    ] {
        if spec.get(field).and_then(Value::as_bool) == Some(true) {
            causes.push(forbidden(
                format!("{path}.{shown}"),
                "when `pod.Spec.HostUsers` is false",
            ));
        }
    }
    causes
}

/// Upstream's sysctl name rule (`IsValidSysctlName`).
fn sysctl_name_ok(name: &str) -> bool {
    static RE: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(SYSCTL_RE).ok());
    name.len() <= 253 && RE.as_ref().is_some_and(|re| re.is_match(name))
}

const SYSCTL_RE: &str = r"^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$";

/// The kernel namespace of a sysctl (`utilsysctl.GetNamespace`): `net`, `ipc` or none.
fn sysctl_namespace(name: &str) -> Option<&'static str> {
    // `NormalizeName`: a name whose first separator is `/` uses `/` for `.`.
    let normalized: String = match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    };
    if normalized == "kernel.sem"
        || ["kernel.shm", "kernel.msg", "fs.mqueue."]
            .iter()
            .any(|p| normalized.starts_with(p))
    {
        Some("ipc")
    } else if normalized.starts_with("net.") {
        Some("net")
    } else {
        None
    }
}

/// `validateSysctls` with `ValidateHostSysctl`.
fn sysctls(spec: &Value, sc: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let host = |f: &str| spec.get(f).and_then(Value::as_bool) == Some(true);
    for (i, s) in list(sc, "sysctls").iter().enumerate() {
        let p = format!("{path}[{i}].name");
        let name = str_of(s, "name");
        if name.is_empty() {
            causes.push(required(&p, ""));
        } else if !sysctl_name_ok(name) {
            causes.push(invalid(
                &p,
                &q(name),
                &format!("must have at most 253 characters and match regex {SYSCTL_RE}"),
            ));
        } else if names.contains(name) {
            causes.push(duplicate(&p, &q(name)));
        }
        match sysctl_namespace(name) {
            Some("net") if host("hostNetwork") => causes.push(invalid(
                &p,
                &q(name),
                "may not be specified when 'hostNetwork' is true",
            )),
            Some("ipc") if host("hostIPC") => causes.push(invalid(
                &p,
                &q(name),
                "may not be specified when 'hostIPC' is true",
            )),
            _ => {}
        }
        names.insert(name.to_string());
    }
    causes
}

/// A `SeccompProfile` as Go's `%#v` shows it (the profile pointer by value).
fn show_seccomp(sp: &Value) -> String {
    let profile = match sp.get("localhostProfile").filter(|v| !v.is_null()) {
        Some(p) => format!("(*string)({})", shown(p)),
        None => "(*string)(nil)".into(),
    };
    format!(
        "core.SeccompProfile{{Type:{}, LocalhostProfile:{profile}}}",
        q(str_of(sp, "type"))
    )
}

/// `validateSeccompProfileField`.
fn seccomp(sp: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(sp) = sp.filter(|v| v.is_object()) else {
        return causes;
    };
    const TYPES: &[&str] = &["Localhost", "RuntimeDefault", "Unconfined"];
    let ty = str_of(sp, "type");
    if ty.is_empty() {
        causes.push(required(
            format!("{path}.type"),
            "type is required when seccompProfile is set",
        ));
    } else if !TYPES.contains(&ty) {
        causes.push(not_supported(format!("{path}.type"), &q(ty), TYPES));
    }
    let profile = sp.get("localhostProfile").filter(|v| !v.is_null());
    if ty == "Localhost" {
        match profile {
            None => causes.push(required(
                format!("{path}.localhostProfile"),
                "must be set when seccomp type is Localhost",
            )),
            Some(p) => causes.extend(local_descending_path(
                p.as_str().unwrap_or(""),
                &format!("{path}.localhostProfile"),
            )),
        }
    } else if profile.is_some() {
        causes.push(invalid(
            format!("{path}.localhostProfile"),
            &show_seccomp(sp),
            "can only be set when seccomp type is Localhost",
        ));
    }
    causes
}

/// `ValidateAppArmorProfileField`.
fn app_armor(profile: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(p) = profile.filter(|v| v.is_object()) else {
        return causes;
    };
    let local = p.get("localhostProfile").filter(|v| !v.is_null());
    let lpath = format!("{path}.localhostProfile");
    match str_of(p, "type") {
        "Localhost" => match local.map(|v| v.as_str().unwrap_or("")) {
            None => causes.push(required(
                &lpath,
                "must be set when AppArmor type is Localhost",
            )),
            Some(l) => {
                if l.trim() != l {
                    causes.push(invalid(&lpath, &q(l), "must not be padded with whitespace"));
                } else if l.is_empty() {
                    causes.push(required(
                        &lpath,
                        "must be set when AppArmor type is Localhost",
                    ));
                }
                if l.len() > 4095 {
                    causes.push(too_long(&lpath, 4095));
                }
            }
        },
        "RuntimeDefault" | "Unconfined" => {
            if let Some(l) = local {
                causes.push(invalid(
                    &lpath,
                    &shown(l),
                    "can only be set when AppArmor type is Localhost",
                ));
            }
        }
        "" => causes.push(required(
            format!("{path}.type"),
            "type is required when appArmorProfile is set",
        )),
        other => causes.push(not_supported(
            format!("{path}.type"),
            &q(other),
            &["Localhost", "RuntimeDefault", "Unconfined"],
        )),
    }
    causes
}

/// `validateWindowsSecurityContextOptions`.
fn windows_options(opts: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(o) = opts.filter(|v| v.is_object()) else {
        return causes;
    };
    if let Some(name) = o.get("gmsaCredentialSpecName").and_then(Value::as_str) {
        for m in dns_problems(NameRule::Subdomain, name) {
            causes.push(invalid(
                format!("{path}.gmsaCredentialSpecName"),
                &q(name),
                &m,
            ));
        }
    }
    if let Some(spec) = o.get("gmsaCredentialSpec").and_then(Value::as_str) {
        let p = format!("{path}.gmsaCredentialSpec");
        if spec.is_empty() {
            causes.push(invalid(
                &p,
                &q(spec),
                "gmsaCredentialSpec cannot be an empty string",
            ));
        } else if spec.len() > 64 * 1024 {
            causes.push(invalid(
                &p,
                &q(spec),
                "gmsaCredentialSpec size must be under 64 KiB",
            ));
        }
    }
    if let Some(user) = o.get("runAsUserName").and_then(Value::as_str) {
        let p = format!("{path}.runAsUserName");
        for m in run_as_user_name_problems(user) {
            causes.push(invalid(&p, &q(user), &m));
        }
    }
    causes
}

/// The `runAsUserName` rules: `DOMAIN\USER`, the domain a NetBIOS or DNS name.
fn run_as_user_name_problems(name: &str) -> Vec<String> {
    if name.is_empty() {
        return vec!["runAsUserName cannot be an empty string".into()];
    }
    if name.chars().any(char::is_control) {
        return vec!["runAsUserName cannot contain control characters".into()];
    }
    let parts: Vec<&str> = name.split('\\').collect();
    let (domain, user) = match parts.as_slice() {
        [user] => (None, *user),
        [domain, user] => (Some(*domain), *user),
        _ => return vec!["runAsUserName cannot contain more than one backslash".into()],
    };
    let mut errs = Vec::new();
    if domain.is_some_and(|d| d.len() >= 256) {
        errs.push("runAsUserName's Domain length must be under 256 characters".into());
    }
    if let Some(d) = domain
        && !netbios_ok(d)
        && !windows_dns_ok(d)
    {
        errs.push("runAsUserName's Domain doesn't match the NetBios nor the DNS format".into());
    }
    if user.is_empty() {
        errs.push("runAsUserName's User cannot be empty".into());
    } else if user.len() > 104 {
        errs.push("runAsUserName's User length must not be longer than 104 characters".into());
    }
    if !user.is_empty() && user.chars().all(|c| c == '.' || c == ' ') {
        errs.push("runAsUserName's User cannot contain only periods or spaces".into());
    }
    if user.chars().any(|c| "\"/\\:;|=,+*?<>@[]".contains(c)) {
        errs.push(
            "runAsUserName's User cannot contain the following characters: \"/\\:;|=,+*?<>@[]"
                .into(),
        );
    }
    errs
}

fn netbios_ok(d: &str) -> bool {
    const BAD: &str = "\\/:*?\"<>|";
    let mut chars = d.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    d.chars().count() <= 15
        && !BAD.contains(first)
        && first != '.'
        && chars.all(|c| !BAD.contains(c))
}

fn windows_dns_ok(d: &str) -> bool {
    d.split('.').all(|l| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    })
}

/// A container's `SecurityContext` as Go's `%#v` shows it (pointers by value).
fn show_security_context(sc: &Value) -> String {
    let fields = [
        ("Capabilities", "capabilities", "*core.Capabilities"),
        ("Privileged", "privileged", "*bool"),
        ("SELinuxOptions", "seLinuxOptions", "*core.SELinuxOptions"),
        (
            "WindowsOptions",
            "windowsOptions",
            "*core.WindowsSecurityContextOptions",
        ),
        ("RunAsUser", "runAsUser", "*int64"),
        ("RunAsGroup", "runAsGroup", "*int64"),
        ("RunAsNonRoot", "runAsNonRoot", "*bool"),
        ("ReadOnlyRootFilesystem", "readOnlyRootFilesystem", "*bool"),
        (
            "AllowPrivilegeEscalation",
            "allowPrivilegeEscalation",
            "*bool",
        ),
        ("ProcMount", "procMount", "*core.ProcMountType"),
        ("SeccompProfile", "seccompProfile", "*core.SeccompProfile"),
        (
            "AppArmorProfile",
            "appArmorProfile",
            "*core.AppArmorProfile",
        ),
    ];
    let parts: Vec<String> = fields
        .iter()
        .map(
            |(go, json, ty)| match sc.get(*json).filter(|v| !v.is_null()) {
                None => format!("{go}:({ty})(nil)"),
                Some(v) => format!("{go}:({ty})({})", shown(v)),
            },
        )
        .collect();
    format!("core.SecurityContext{{{}}}", parts.join(", "))
}

/// `ValidateSecurityContext` of a container (`hostUsers`: the pod's).
pub(super) fn container_security(c: &Value, p: &str, host_users: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(sc) = c.get("securityContext").filter(|v| v.is_object()) else {
        return causes;
    };
    let path = format!("{p}.securityContext");
    ids(sc, &["runAsUser", "runAsGroup"], &path, &mut causes);
    if let Some(pm) = sc.get("procMount").filter(|v| !v.is_null()) {
        let pm = pm.as_str().unwrap_or("");
        if !["Default", "Unmasked"].contains(&pm) {
            causes.push(not_supported(
                format!("{path}.procMount"),
                &q(pm),
                &["Default", "Unmasked"],
            ));
        }
        if host_users && pm == "Unmasked" {
            causes.push(invalid(
                format!("{path}.procMount"),
                &q(pm),
                "`hostUsers` must be false to use `Unmasked`",
            ));
        }
    }
    causes.extend(seccomp(
        sc.get("seccompProfile"),
        &format!("{path}.seccompProfile"),
    ));
    if sc.get("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false) {
        if sc.get("privileged").and_then(Value::as_bool) == Some(true) {
            causes.push(invalid(
                &path,
                &show_security_context(sc),
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        let adds = sc
            .get("capabilities")
            .map(|caps| list(caps, "add"))
            .unwrap_or_default();
        for cap in adds {
            if cap.as_str() == Some("CAP_SYS_ADMIN") {
                causes.push(invalid(
                    &path,
                    &show_security_context(sc),
                    "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` \
                     CAP_SYS_ADMIN",
                ));
            }
        }
    }
    causes.extend(windows_options(
        sc.get("windowsOptions"),
        &format!("{path}.windowsOptions"),
    ));
    causes.extend(app_armor(
        sc.get("appArmorProfile"),
        &format!("{path}.appArmorProfile"),
    ));
    causes
}

/// Every container of the spec with its path (`VisitContainersWithPath`: init, regular,
/// ephemeral).
fn containers_with_path<'a>(spec: &'a Value, path: &str) -> Vec<(&'a Value, String)> {
    let mut out = Vec::new();
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, c) in list(spec, key).into_iter().enumerate() {
            out.push((c, format!("{path}.{key}[{i}]")));
        }
    }
    out
}

/// `validateWindowsHostProcessPod` (privileged containers allowed by the cluster).
fn host_process(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let hp = |v: &Value| {
        v.get("securityContext")
            .and_then(|s| s.get("windowsOptions"))
            .and_then(|w| w.get("hostProcess"))
            .and_then(Value::as_bool)
    };
    let pod = hp(spec);
    let (mut count, mut host_process) = (0, 0);
    for (c, cp) in containers_with_path(spec, path) {
        count += 1;
        let own = hp(c);
        if let (Some(pod), Some(own)) = (pod, own)
            && pod != own
        {
            causes.push(invalid(
                format!("{cp}.securityContext.windowsOptions.hostProcess"),
                &own.to_string(),
                &format!(
                    "pod hostProcess value must be identical if both are specified, was {pod}"
                ),
            ));
        }
        if own == Some(true) || (own.is_none() && pod == Some(true)) {
            host_process += 1;
        }
    }
    if host_process > 0 {
        if host_process != count {
            causes.push(invalid(
                path,
                "\"\"",
                "If pod contains any hostProcess containers then all containers must be \
                 HostProcess containers",
            ));
        }
        if spec.get("hostNetwork").and_then(Value::as_bool) != Some(true) {
            causes.push(invalid(
                format!("{path}.hostNetwork"),
                "false",
                "hostNetwork must be true if pod contains any hostProcess containers",
            ));
        }
    }
    causes
}

/// `validateOS`, then `validateLinux`/`validateWindows` for a valid OS name.
pub(super) fn pod_os(spec: &Value, path: &str) -> Vec<Cause> {
    let Some(os) = spec.get("os").filter(|v| v.is_object()) else {
        return Vec::new();
    };
    let name = str_of(os, "name");
    if name.is_empty() {
        return vec![required(format!("{path}.os.name"), "cannot be empty")];
    }
    if !["linux", "windows"].contains(&name) {
        return vec![not_supported(
            format!("{path}.os"),
            &q(name),
            &["linux", "windows"],
        )];
    }
    let mut causes = Vec::new();
    let set = |v: &Value, f: &str| v.get(f).is_some_and(|x| !x.is_null());
    let psc = spec.get("securityContext").filter(|v| v.is_object());
    if name == "linux" {
        const MSG: &str = "windows options cannot be set for a linux pod";
        if psc.is_some_and(|s| set(s, "windowsOptions")) {
            causes.push(forbidden(
                format!("{path}.securityContext.windowsOptions"),
                MSG,
            ));
        }
        for (c, cp) in containers_with_path(spec, path) {
            if c.get("securityContext")
                .is_some_and(|s| set(s, "windowsOptions"))
            {
                causes.push(forbidden(
                    format!("{cp}.securityContext.windowsOptions"),
                    MSG,
                ));
            }
        }
        return causes;
    }
    const MSG: &str = "cannot be set for a windows pod";
    if let Some(s) = psc {
        let sp = format!("{path}.securityContext");
        for f in ["appArmorProfile", "seLinuxOptions"] {
            if set(s, f) {
                causes.push(forbidden(format!("{sp}.{f}"), MSG));
            }
        }
        if set(spec, "hostUsers") {
            causes.push(forbidden(format!("{path}.hostUsers"), MSG));
        }
        for f in ["hostPID", "hostIPC"] {
            if spec.get(f).and_then(Value::as_bool) == Some(true) {
                causes.push(forbidden(format!("{path}.{f}"), MSG));
            }
        }
        for f in ["seccompProfile", "fsGroup", "fsGroupChangePolicy"] {
            if set(s, f) {
                causes.push(forbidden(format!("{sp}.{f}"), MSG));
            }
        }
        if !list(s, "sysctls").is_empty() {
            causes.push(forbidden(format!("{sp}.sysctls"), MSG));
        }
        if set(spec, "shareProcessNamespace") {
            causes.push(forbidden(format!("{path}.shareProcessNamespace"), MSG));
        }
        for f in [
            "runAsUser",
            "runAsGroup",
            "supplementalGroups",
            "supplementalGroupsPolicy",
            "seLinuxChangePolicy",
        ] {
            if set(s, f) {
                causes.push(forbidden(format!("{sp}.{f}"), MSG));
            }
        }
    }
    for (c, cp) in containers_with_path(spec, path) {
        let Some(s) = c.get("securityContext").filter(|v| v.is_object()) else {
            continue;
        };
        for f in [
            "appArmorProfile",
            "seLinuxOptions",
            "seccompProfile",
            "capabilities",
            "readOnlyRootFilesystem",
            "privileged",
            "allowPrivilegeEscalation",
            "procMount",
            "runAsUser",
            "runAsGroup",
        ] {
            if set(s, f) {
                causes.push(forbidden(format!("{cp}.securityContext.{f}"), MSG));
            }
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::status::cause_lines as fields;

    #[test]
    fn sysctl_names_and_namespaces() {
        assert!(sysctl_name_ok("net.ipv4.ip_forward"));
        assert!(sysctl_name_ok("net/ipv4/conf/eth0.100/rp_filter"));
        assert!(!sysctl_name_ok("Net.bad"));
        assert_eq!(sysctl_namespace("net.core.somaxconn"), Some("net"));
        assert_eq!(sysctl_namespace("kernel.shm_rmid_forced"), Some("ipc"));
        assert_eq!(sysctl_namespace("kernel.sem"), Some("ipc"));
        assert_eq!(sysctl_namespace("vm.overcommit_memory"), None);
        let spec = json!({"hostNetwork": true, "securityContext": {"sysctls": [
            {"name": "net.core.somaxconn", "value": "1024"},
            {"name": "kernel.msgmax", "value": "1"},
            {"name": "kernel.msgmax", "value": "2"},
            {"name": "Bad!", "value": "2"}]}});
        assert_eq!(
            fields(&pod_security(&spec, "spec")),
            vec![
                "spec.securityContext.sysctls[0].name: Invalid value: \"net.core.somaxconn\": may not be specified when 'hostNetwork' is true".to_string(),
                "spec.securityContext.sysctls[2].name: Duplicate value: \"kernel.msgmax\"".into(),
                format!("spec.securityContext.sysctls[3].name: Invalid value: \"Bad!\": must have at most 253 characters and match regex {SYSCTL_RE}"),
            ]
        );
    }

    #[test]
    fn pod_and_container_security_contexts() {
        let spec = json!({"securityContext": {"runAsUser": -1, "fsGroup": 2000,
            "fsGroupChangePolicy": "Sometimes", "supplementalGroupsPolicy": "Loose",
            "seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "p.json"},
            "appArmorProfile": {"type": "Localhost"}}});
        let got = fields(&pod_security(&spec, "spec"));
        assert_eq!(
            got,
            vec![
                "spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive",
                "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnRootMismatch\"",
                "spec.securityContext.supplementalGroupsPolicy: Unsupported value: \"Loose\": supported values: \"Merge\", \"Strict\"",
                "spec.securityContext.seccompProfile.localhostProfile: Invalid value: core.SeccompProfile{Type:\"RuntimeDefault\", LocalhostProfile:(*string)(\"p.json\")}: can only be set when seccomp type is Localhost",
                "spec.securityContext.appArmorProfile.localhostProfile: Required value: must be set when AppArmor type is Localhost",
            ]
        );
        let c = json!({"securityContext": {"allowPrivilegeEscalation": false, "privileged": true,
            "capabilities": {"add": ["CAP_SYS_ADMIN"]}, "procMount": "Unmasked",
            "seccompProfile": {"type": "Localhost"}}});
        let got = fields(&container_security(&c, "spec.containers[0]", true));
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(
            got[0],
            "spec.containers[0].securityContext.procMount: Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`"
        );
        assert_eq!(
            got[1],
            "spec.containers[0].securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost"
        );
        assert!(got[2].ends_with(
            ": cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
        ));
        assert!(got[3].ends_with(
            ": cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN"
        ));
        // The restricted profile's container context is valid.
        let ok = json!({"securityContext": {"allowPrivilegeEscalation": false,
            "runAsNonRoot": true, "runAsUser": 1000, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}});
        assert!(container_security(&ok, "c", true).is_empty());
    }

    #[test]
    fn operating_systems_and_windows_options() {
        let spec = json!({"os": {"name": "windows"}, "hostPID": true,
            "securityContext": {"runAsUser": 1, "windowsOptions": {"runAsUserName": "a\\b\\c"}},
            "containers": [{"securityContext": {"privileged": false}}]});
        let mut got = fields(&pod_security(&spec, "spec"));
        got.extend(fields(&pod_os(&spec, "spec")));
        assert_eq!(
            got,
            vec![
                "spec.securityContext.windowsOptions.runAsUserName: Invalid value: \"a\\\\b\\\\c\": runAsUserName cannot contain more than one backslash",
                "spec.hostPID: Forbidden: cannot be set for a windows pod",
                "spec.securityContext.runAsUser: Forbidden: cannot be set for a windows pod",
                "spec.containers[0].securityContext.privileged: Forbidden: cannot be set for a windows pod",
            ]
        );
        let linux = json!({"os": {"name": "linux"},
            "containers": [{"securityContext": {"windowsOptions": {}}}]});
        assert_eq!(
            fields(&pod_os(&linux, "spec")),
            vec![
                "spec.containers[0].securityContext.windowsOptions: Forbidden: windows options cannot be set for a linux pod"
            ]
        );
        assert_eq!(
            fields(&pod_os(&json!({"os": {"name": "plan9"}}), "spec")),
            vec!["spec.os: Unsupported value: \"plan9\": supported values: \"linux\", \"windows\""]
        );
        assert!(run_as_user_name_problems("CONTOSO\\svc-web").is_empty());
        let host = json!({"hostUsers": false, "hostNetwork": true});
        assert_eq!(
            fields(&pod_security(&host, "spec")),
            vec!["spec.hostNetwork: Forbidden: when `pod.Spec.HostUsers` is false"]
        );
    }
}
