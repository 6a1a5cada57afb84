//! Bootstrap tokens (upstream's `bootstrap.kubernetes.io/token` Secrets, as `kubeadm token` and
//! `k3s token create` write them): a bearer token `<id>.<secret>` (`[a-z0-9]{6}` `.`
//! `[a-z0-9]{16}`) authenticates as `system:bootstrap:<id>` in `system:bootstrappers` plus the
//! Secret's `auth-extra-groups`, when `kube-system/bootstrap-token-<id>` exists, is of that
//! type, is not being deleted, holds the same `token-id` and `token-secret`, allows
//! `usage-bootstrap-authentication` and has not passed its `expiration` (upstream's
//! `plugin/pkg/auth/authenticator/token/bootstrap`). Anything else authenticates nobody.

use base64::Engine as _;
use serde_json::Value;

use super::UserInfo;
use crate::registry::REGISTRY;
use crate::storage::Store;

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The namespace bootstrap token Secrets live in.
pub const NAMESPACE: &str = "kube-system";
/// The name prefix of bootstrap token Secrets.
pub const SECRET_PREFIX: &str = "bootstrap-token-";
/// The group every bootstrap token user is in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The prefix of bootstrap token user names.
pub const USER_PREFIX: &str = "system:bootstrap:";

/// `(id, secret)` when `token` has the bootstrap token form.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// A Secret's `data` value as text.
fn data(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Why a Secret does not authenticate a token (logged at debug level, never answered).
pub(crate) fn check(
    secret: &Value,
    id: &str,
    token_secret: &str,
    now: i64,
) -> Result<UserInfo, String> {
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return Err(format!(
            "secret {SECRET_PREFIX}{id} is not of type {SECRET_TYPE}"
        ));
    }
    if secret
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return Err(format!("token {id} is being deleted"));
    }
    if data(secret, "token-id").as_deref() != Some(id) {
        return Err(format!("token {id}: the secret's token-id does not match"));
    }
    let stored = data(secret, "token-secret").unwrap_or_default();
    let same = stored.len() == token_secret.len()
        && stored
            .bytes()
            .zip(token_secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(format!("token {id}: wrong secret"));
    }
    if let Some(exp) = data(secret, "expiration") {
        match crate::time::parse(&exp) {
            Some(t) if t.as_second() > now => {}
            Some(_) => return Err(format!("token {id} expired at {exp}")),
            None => return Err(format!("token {id}: unparsable expiration {exp:?}")),
        }
    }
    if data(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!("token {id} is not marked for authentication"));
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    if let Some(extra) = data(secret, "auth-extra-groups") {
        for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !valid_group(g) {
                return Err(format!("token {id}: invalid extra group {g:?}"));
            }
            if !groups.iter().any(|have| have == g) {
                groups.push(g.to_string());
            }
        }
    }
    Ok(UserInfo::new(format!("{USER_PREFIX}{id}"), groups))
}

/// Upstream's rule for `auth-extra-groups`: `system:bootstrappers:` then a name.
pub fn valid_group(group: &str) -> bool {
    group
        .strip_prefix("system:bootstrappers:")
        .is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-:_".contains(&b))
                && !rest.ends_with(':')
        })
}

/// Authenticates a bearer token against the bootstrap token Secrets in `store`. `None`: not a
/// bootstrap token, or one that does not authenticate.
pub(crate) async fn authenticate(store: &Store, token: &str) -> Option<UserInfo> {
    let (id, token_secret) = parse(token)?;
    let info = REGISTRY.find("", "v1", "secrets")?;
    let key = info.key(Some(NAMESPACE), &format!("{SECRET_PREFIX}{id}"));
    let secret = match store.get(&key, 0).await {
        Ok((_, Some(kv))) => serde_json::from_slice::<Value>(&kv.value).ok()?,
        Ok((_, None)) => {
            tracing::debug!(id, "bootstrap token: no such secret");
            return None;
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "bootstrap token: cannot read the secret");
            return None;
        }
    };
    match check(&secret, id, token_secret, crate::time::unix_now()) {
        Ok(user) => Some(user),
        Err(why) => {
            tracing::debug!(%why, "bootstrap token rejected");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(expiration: Option<&str>, usage: &str, groups: &str) -> Value {
        let mut data = json!({
            "token-id": b64("abcdef"),
            "token-secret": b64("0123456789abcdef"),
            "usage-bootstrap-authentication": b64(usage),
            "auth-extra-groups": b64(groups),
        });
        if let Some(e) = expiration {
            data["expiration"] = b64(e).into();
        }
        json!({ "type": SECRET_TYPE, "metadata": { "name": "bootstrap-token-abcdef" }, "data": data })
    }

    #[test]
    fn token_form() {
        assert_eq!(
            parse("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert!(parse("ABCDEF.0123456789abcdef").is_none());
        assert!(parse("abcde.0123456789abcdef").is_none());
        assert!(parse("abcdef.0123456789abcde").is_none());
        assert!(parse("abcdef0123456789abcdef").is_none());
    }

    #[test]
    fn secret_rules() {
        let now = 1_800_000_000; // 2027-01-15
        let s = secret(
            Some("2030-01-01T00:00:00Z"),
            "true",
            "system:bootstrappers:rk3s:default-node-token",
        );
        let user = check(&s, "abcdef", "0123456789abcdef", now).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:rk3s:default-node-token"
            ]
        );
        assert!(
            check(&s, "abcdef", "0123456789abcdee", now).is_err(),
            "wrong secret"
        );
        assert!(
            check(&s, "abcdeg", "0123456789abcdef", now).is_err(),
            "wrong id"
        );
        let expired = secret(Some("2020-01-01T00:00:00Z"), "true", "");
        assert!(check(&expired, "abcdef", "0123456789abcdef", now).is_err());
        let forever = secret(None, "true", "");
        assert!(check(&forever, "abcdef", "0123456789abcdef", now).is_ok());
        let signing_only = secret(None, "false", "");
        assert!(check(&signing_only, "abcdef", "0123456789abcdef", now).is_err());
        let bad_group = secret(None, "true", "system:masters");
        assert!(check(&bad_group, "abcdef", "0123456789abcdef", now).is_err());
        let mut deleting = forever.clone();
        deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert!(check(&deleting, "abcdef", "0123456789abcdef", now).is_err());
        let mut opaque = forever;
        opaque["type"] = "Opaque".into();
        assert!(check(&opaque, "abcdef", "0123456789abcdef", now).is_err());
    }
}
