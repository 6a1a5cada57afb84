//! Request attributes for authorization, derived from the method and path as upstream's
//! `RequestInfoFactory` does (without looking at the registry): `/api/v1/...` and
//! `/apis/<group>/<version>/...` are resource requests, every other path is non-resource.

use axum::http::{Method, Uri};

use super::UserInfo;
use crate::status::ApiError;

/// What a request asks to do, as upstream's `authorizer.Attributes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub(crate) user: UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// (non-resource requests) the lower-case HTTP method.
    pub(crate) verb: String,
    pub(crate) resource_request: bool,
    pub(crate) api_group: String,
    pub(crate) api_version: String,
    pub(crate) namespace: String,
    pub(crate) resource: String,
    pub(crate) subresource: String,
    pub(crate) name: String,
    /// The request path (non-resource requests).
    pub(crate) path: String,
}

impl Attributes {
    /// A non-resource request of `user`: `verb` on URL `path`.
    pub(crate) fn non_resource(user: UserInfo, verb: String, path: String) -> Self {
        Attributes {
            user,
            verb,
            resource_request: false,
            api_group: String::new(),
            api_version: String::new(),
            namespace: String::new(),
            resource: String::new(),
            subresource: String::new(),
            name: String::new(),
            path,
        }
    }

    pub(crate) fn from_request(user: &UserInfo, method: &Method, uri: &Uri) -> Self {
        let path = uri.path().to_string();
        let mut attrs = Attributes::non_resource(
            user.clone(),
            method.as_str().to_ascii_lowercase(),
            path.clone(),
        );
        let segs: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let rest = match segs.as_slice() {
            ["api", version, rest @ ..] => {
                attrs.api_version = (*version).into();
                rest
            }
            ["apis", group, version, rest @ ..] => {
                attrs.api_group = (*group).into();
                attrs.api_version = (*version).into();
                rest
            }
            _ => return attrs,
        };
        attrs.resource_request = true;
        let mut rest = rest;
        let mut watch_path = false;
        if rest.first() == Some(&"watch") {
            watch_path = true;
            rest = &rest[1..];
        }
        // `/namespaces/<ns>/<resource>...`; `/namespaces/<ns>` alone is the namespace itself,
        // and `/namespaces/<ns>/status` and `/namespaces/<ns>/finalize` are its subresources
        // (upstream's `namespaceSubresources`), not resources in the namespace.
        if let ["namespaces", ns, more @ ..] = rest {
            attrs.namespace = (*ns).into();
            match more {
                [] | ["status" | "finalize", ..] => {}
                _ => rest = more,
            }
        }
        match rest {
            ["namespaces", ns] => {
                attrs.resource = "namespaces".into();
                attrs.name = (*ns).into();
                attrs.namespace = (*ns).into();
            }
            [resource] => attrs.resource = (*resource).into(),
            [resource, name] => {
                attrs.resource = (*resource).into();
                attrs.name = (*name).into();
            }
            [resource, name, sub, ..] => {
                attrs.resource = (*resource).into();
                attrs.name = (*name).into();
                attrs.subresource = (*sub).into();
            }
            [] => {
                // A group version's discovery document: a non-resource path.
                attrs.resource_request = false;
                return attrs;
            }
        }
        // A proxied request's query belongs to the backend: `?watch=1` there is not a watch.
        let watch = watch_path
            || (attrs.subresource != "proxy"
                && crate::rest::flag(&crate::rest::parse_query(uri), "watch"));
        attrs.verb = match *method {
            Method::GET | Method::HEAD if watch => "watch",
            Method::GET | Method::HEAD if attrs.name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if attrs.name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
        if attrs.verb.is_empty() {
            attrs.verb = method.as_str().to_ascii_lowercase();
        }
        // A WebSocket client opens exec, attach and port-forward streams with a GET; they are
        // authorized as the `create` that SPDY clients' POST is (upstream's
        // AuthorizePodWebsocketUpgradeCreatePermission, on by default since 1.30).
        if attrs.api_group.is_empty()
            && attrs.resource == "pods"
            && matches!(
                attrs.subresource.as_str(),
                "exec" | "attach" | "portforward"
            )
            && attrs.verb == "get"
        {
            attrs.verb = "create".into();
        }
        attrs
    }

    /// Attributes of a resource request, for the access-review APIs.
    pub(crate) fn resource(
        user: UserInfo,
        verb: &str,
        api_group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Attributes {
            user,
            verb: verb.into(),
            resource_request: true,
            api_group: api_group.into(),
            api_version: "*".into(),
            namespace: namespace.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    /// Upstream's 403: `pods "x" is forbidden: User "u" cannot get resource "pods" in API group
    /// "" in the namespace "default"`, with `reason` appended when there is one.
    pub(crate) fn forbidden(&self, reason: &str) -> ApiError {
        let user = &self.user.name;
        let mut message = if !self.resource_request {
            format!(
                "forbidden: User \"{user}\" cannot {} path \"{}\"",
                self.verb, self.path
            )
        } else {
            let mut resource = self.resource.clone();
            if !self.subresource.is_empty() {
                resource = format!("{resource}/{}", self.subresource);
            }
            let qualified = if self.api_group.is_empty() {
                self.resource.clone()
            } else {
                format!("{}.{}", self.resource, self.api_group)
            };
            let object = if self.name.is_empty() {
                format!("{qualified} is forbidden")
            } else {
                format!("{qualified} \"{}\" is forbidden", self.name)
            };
            let scope = if self.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", self.namespace)
            };
            format!(
                "{object}: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
                self.verb, self.api_group
            )
        };
        if !reason.is_empty() {
            message = format!("{message}: {reason}");
        }
        let mut details = serde_json::json!({});
        if self.resource_request {
            details = serde_json::json!({ "kind": self.resource });
            if !self.name.is_empty() {
                details["name"] = self.name.clone().into();
            }
            if !self.api_group.is_empty() {
                details["group"] = self.api_group.clone().into();
            }
        }
        ApiError {
            details: Some(details),
            ..ApiError::new(403, "Forbidden", message)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attrs(method: Method, uri: &str) -> Attributes {
        let user = UserInfo::new("jane", vec![]);
        Attributes::from_request(&user, &method, &uri.parse().unwrap())
    }

    #[test]
    fn resource_requests() {
        let a = attrs(Method::GET, "/api/v1/namespaces/default/pods");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
            ("list", "pods", "default")
        );
        let a = attrs(Method::GET, "/api/v1/namespaces/default/pods/p1/log");
        assert_eq!(
            (a.verb.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("get", "p1", "log")
        );
        let a = attrs(
            Method::GET,
            "/api/v1/namespaces/default/pods/p1/exec?command=ls&stdout=1",
        );
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_str()),
            ("create", "exec")
        );
        let a = attrs(Method::GET, "/api/v1/nodes/n1/proxy/stats/summary");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("get", "nodes", "proxy")
        );
        // The proxy subresources: the verb follows the method, as upstream.
        for (method, verb) in [
            (Method::GET, "get"),
            (Method::HEAD, "get"),
            (Method::POST, "create"),
            (Method::PUT, "update"),
            (Method::PATCH, "patch"),
            (Method::DELETE, "delete"),
        ] {
            let a = attrs(
                method,
                "/api/v1/namespaces/d/services/https:web:443/proxy/x?watch=1",
            );
            assert_eq!(
                (
                    a.verb.as_str(),
                    a.resource.as_str(),
                    a.subresource.as_str(),
                    a.name.as_str()
                ),
                (verb, "services", "proxy", "https:web:443")
            );
        }
        let a = attrs(Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "kube-system", "kube-system")
        );
        // A namespace's `status` and `finalize` are subresources of the namespace (cluster
        // scoped, named by the path), as upstream's RequestInfoFactory reads them.
        for sub in ["status", "finalize"] {
            let a = attrs(Method::PUT, &format!("/api/v1/namespaces/gone/{sub}"));
            assert_eq!(
                (
                    a.verb.as_str(),
                    a.resource.as_str(),
                    a.subresource.as_str(),
                    a.name.as_str(),
                    a.namespace.as_str()
                ),
                ("update", "namespaces", sub, "gone", "gone")
            );
        }
        // Anything else after a namespace is a resource in it.
        let a = attrs(Method::GET, "/api/v1/namespaces/a/statuses");
        assert_eq!(
            (a.resource.as_str(), a.namespace.as_str()),
            ("statuses", "a")
        );
        let a = attrs(Method::GET, "/apis/apps/v1/deployments?watch=true");
        assert_eq!((a.verb.as_str(), a.api_group.as_str()), ("watch", "apps"));
        let a = attrs(Method::GET, "/api/v1/watch/namespaces/a/configmaps");
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("watch", "a"));
        let a = attrs(Method::DELETE, "/api/v1/namespaces/a/configmaps");
        assert_eq!(a.verb, "deletecollection");
        let a = attrs(
            Method::POST,
            "/api/v1/namespaces/a/serviceaccounts/default/token",
        );
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("create", "serviceaccounts", "token")
        );
        let a = attrs(Method::GET, "/apis/apps/v1");
        assert!(!a.resource_request);
        let a = attrs(Method::GET, "/healthz");
        assert_eq!((a.verb.as_str(), a.resource_request), ("get", false));
    }

    #[test]
    fn forbidden_messages_are_upstreams() {
        let a = attrs(Method::GET, "/api/v1/namespaces/default/pods");
        assert_eq!(
            a.forbidden("").message,
            "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let a = attrs(Method::GET, "/apis/apps/v1/deployments");
        assert_eq!(
            a.forbidden("").message,
            "deployments.apps is forbidden: User \"jane\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let a = attrs(Method::GET, "/api/v1/namespaces/a/pods/p/log");
        assert_eq!(
            a.forbidden("").message,
            "pods \"p\" is forbidden: User \"jane\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"a\""
        );
        let a = attrs(Method::GET, "/metrics");
        assert_eq!(
            a.forbidden("").message,
            "forbidden: User \"jane\" cannot get path \"/metrics\""
        );
    }
}
