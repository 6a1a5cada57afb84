//! K3s join tokens: `K10<sha256 of the CA bundle, hex>::<username>:<password>` (full form) or
//! just `<password>` / `<username>:<password>` (short form, which pins no CA). A joining node
//! checks the CA it downloads against the hash before trusting anything from the server.
//!
//! The credentials may also be a bootstrap token `<id>.<secret>` (`rk3s token create`), which
//! an agent sends as a bearer token and the server checks against its Secret; a server's own
//! token cannot be one (K3s: bootstrap tokens join agents only).
//!
//! The server keeps its token in `<data-dir>/server/token` (full form, mode 0600; K3s'
//! `server/node-token` is a symlink to it), created on first start ([`load_or_create`]); the
//! join endpoints (`crate::join`) accept its password as `node:<password>` or
//! `server:<password>` basic credentials.

use sha2::Digest as _;

const PREFIX: &str = "K10";
/// The username a short token stands for.
const DEFAULT_USER: &str = "server";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the server CA bundle, when the token pins it.
    pub ca_hash: Option<String>,
    /// `server` (servers joining) or `node` (agents); empty for a bootstrap token.
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a token is unusable.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error("invalid token format: {0}")]
    Format(&'static str),
    /// `--token` given a bootstrap token (K3s: they join agents only).
    #[error("a bootstrap token (<id>.<secret>) cannot be the server token: they join agents only")]
    Bootstrap,
    #[error("token CA hash does not match the cluster CA certificate hash: {expected} != {actual}")]
    CaHash { expected: String, actual: String },
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The server's join token: `configured` (`--token`, either form) if given, else the one in
/// `<server_dir>/token`, else a new random one. A configured or stored token that pins another
/// CA is an error. The result is (re)written to `<server_dir>/token` in the full form (mode
/// 0600), with `<server_dir>/node-token` a symlink to it, as K3s lays them out.
pub fn load_or_create(
    server_dir: &std::path::Path,
    ca_pem: &str,
    configured: Option<&str>,
) -> Result<JoinToken, JoinTokenError> {
    let path = server_dir.join("token");
    let file_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| JoinTokenError::File { path, source }
    };
    let given = match configured.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => Some(JoinToken::parse(t)?),
        None => match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(JoinToken::parse(&text)?),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(file_err(&path)(e)),
        },
    };
    let token = match given {
        Some(t) if t.is_bootstrap() => return Err(JoinTokenError::Bootstrap),
        Some(t) => {
            t.verify_ca(ca_pem)?;
            JoinToken {
                ca_hash: Some(ca_hash(ca_pem)),
                username: DEFAULT_USER.into(),
                password: t.password,
            }
        }
        None => JoinToken::generate(ca_pem, DEFAULT_USER),
    };
    std::fs::create_dir_all(server_dir).map_err(file_err(server_dir))?;
    if std::fs::read_to_string(&path).ok().as_deref() != Some(&format!("{token}\n")) {
        crate::pki::write_file(&path, &format!("{token}\n"), 0o600).map_err(|e| match e {
            crate::Error::File { path, source } => JoinTokenError::File { path, source },
            other => JoinTokenError::File {
                path: path.clone(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
    }
    let link = server_dir.join("node-token");
    if std::fs::read_link(&link).ok().as_deref() != Some(std::path::Path::new("token")) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("token", &link).map_err(file_err(&link))?;
    }
    Ok(token)
}

/// Hex SHA-256 of a CA bundle, as K3s pins it.
pub fn ca_hash(ca_pem: &str) -> String {
    format!("{:x}", sha2::Sha256::digest(ca_pem.as_bytes()))
}

impl JoinToken {
    /// Parses either form.
    pub fn parse(token: &str) -> Result<Self, JoinTokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(JoinTokenError::Format("empty token"));
        }
        let (ca_hash, creds) = match token.strip_prefix(PREFIX) {
            Some(rest) => {
                let (hash, creds) = rest
                    .split_once("::")
                    .ok_or(JoinTokenError::Format("K10 token without '::'"))?;
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(JoinTokenError::Format(
                        "the CA hash must be 64 hexadecimal digits",
                    ));
                }
                (Some(hash.to_ascii_lowercase()), creds)
            }
            None => (None, token),
        };
        let (username, password) = match creds.split_once(':') {
            Some((u, p)) => (u, p),
            None if crate::auth::bootstrap::parse(creds).is_some() => ("", creds),
            None => (DEFAULT_USER, creds),
        };
        if username.is_empty()
            && !password.is_empty()
            && crate::auth::bootstrap::parse(password).is_some()
        {
            return Ok(JoinToken {
                ca_hash,
                username: String::new(),
                password: password.to_string(),
            });
        }
        if username.is_empty() || password.is_empty() {
            return Err(JoinTokenError::Format("empty username or password"));
        }
        Ok(JoinToken {
            ca_hash,
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    /// A new full token for `username` pinning `ca_pem`, with a random password.
    pub fn generate(ca_pem: &str, username: &str) -> Self {
        let secret: [u8; 16] = rand::random();
        JoinToken {
            ca_hash: Some(ca_hash(ca_pem)),
            username: username.to_string(),
            password: secret.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Whether this is a bootstrap token (`<id>.<secret>`, sent as a bearer token).
    pub fn is_bootstrap(&self) -> bool {
        self.username.is_empty()
    }

    /// Whether `username:password` are credentials this token accepts: the password, as the
    /// `node` (agents) or `server` (servers) user. Compared in constant time.
    pub fn accepts(&self, username: &str, password: &str) -> bool {
        !self.is_bootstrap()
            && same_secret(&self.password, password)
            && matches!(username, "node" | "server")
    }

    /// An agent token (`--agent-token`): accepts the password as the `node` user only.
    pub fn accepts_agent(&self, username: &str, password: &str) -> bool {
        !self.is_bootstrap() && same_secret(&self.password, password) && username == "node"
    }

    /// `Ok` when the token pins no CA or pins exactly `ca_pem`.
    pub fn verify_ca(&self, ca_pem: &str) -> Result<(), JoinTokenError> {
        match &self.ca_hash {
            Some(expected) if *expected != ca_hash(ca_pem) => Err(JoinTokenError::CaHash {
                expected: expected.clone(),
                actual: ca_hash(ca_pem),
            }),
            _ => Ok(()),
        }
    }
}

/// Constant-time comparison of two secrets.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl std::fmt::Display for JoinToken {
    /// The full form when a CA is pinned, else `<username>:<password>` (a bootstrap token:
    /// `<id>.<secret>` in place of `<username>:<password>`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let creds = if self.is_bootstrap() {
            self.password.clone()
        } else {
            format!("{}:{}", self.username, self.password)
        };
        match &self.ca_hash {
            Some(h) => write!(f, "{PREFIX}{h}::{creds}"),
            None => write!(f, "{creds}"),
        }
    }
}

/// The agent token (`--agent-token`, K3s' `K3S_AGENT_TOKEN`): `configured` if given (either
/// form, must pin this CA if it pins one), else the one in `<server_dir>/agent-token`, else
/// none (agents then join with the server token). Written back to `<server_dir>/agent-token`
/// in the full form with the `node` user (mode 0600), as K3s does.
pub fn load_agent_token(
    server_dir: &std::path::Path,
    ca_pem: &str,
    configured: Option<&str>,
) -> Result<Option<JoinToken>, JoinTokenError> {
    let path = server_dir.join("agent-token");
    let text = match configured.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => t.to_string(),
        None => match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(JoinTokenError::File { path, source }),
        },
    };
    let given = JoinToken::parse(&text)?;
    if given.is_bootstrap() {
        return Err(JoinTokenError::Bootstrap);
    }
    given.verify_ca(ca_pem)?;
    let token = JoinToken {
        ca_hash: Some(ca_hash(ca_pem)),
        username: "node".into(),
        password: given.password,
    };
    std::fs::create_dir_all(server_dir).map_err(|source| JoinTokenError::File {
        path: server_dir.to_path_buf(),
        source,
    })?;
    if std::fs::read_to_string(&path).ok().as_deref() != Some(&format!("{token}\n")) {
        crate::pki::write_file(&path, &format!("{token}\n"), 0o600).map_err(|e| {
            JoinTokenError::File {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
    }
    Ok(Some(token))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn full_and_short_forms() {
        let ca = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
        let t = JoinToken::generate(ca, "node");
        let text = t.to_string();
        assert!(
            text.starts_with("K10") && text.contains("::node:"),
            "{text}"
        );
        let back = JoinToken::parse(&text).unwrap();
        assert_eq!(back, t);
        assert!(back.verify_ca(ca).is_ok());
        let err = back.verify_ca("another CA").unwrap_err();
        assert!(matches!(err, JoinTokenError::CaHash { .. }), "{err}");

        let short = JoinToken::parse("s3cret").unwrap();
        assert_eq!(
            (short.username.as_str(), short.password.as_str()),
            ("server", "s3cret")
        );
        assert!(
            short.verify_ca("anything").is_ok(),
            "a short token pins nothing"
        );
        let short = JoinToken::parse("node:s3cret").unwrap();
        assert_eq!(short.username, "node");

        assert!(JoinToken::parse("K10abc::server:x").is_err(), "short hash");
        assert!(JoinToken::parse(&format!("K10{}server:x", "a".repeat(64))).is_err());
        assert!(JoinToken::parse("").is_err());
        assert!(JoinToken::parse(&format!("K10{}::server:", "a".repeat(64))).is_err());
        assert!(t.accepts("node", &t.password) && t.accepts("server", &t.password));
        assert!(t.accepts_agent("node", &t.password) && !t.accepts_agent("server", &t.password));

        // Bootstrap tokens, short and full.
        let b = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        assert!(b.is_bootstrap() && b.ca_hash.is_none());
        assert_eq!(b.to_string(), "abcdef.0123456789abcdef");
        assert!(!b.accepts("node", "abcdef.0123456789abcdef"));
        let full = format!("K10{}::abcdef.0123456789abcdef", ca_hash(ca));
        let b = JoinToken::parse(&full).unwrap();
        assert!(b.is_bootstrap() && b.verify_ca(ca).is_ok());
        assert_eq!(b.to_string(), full);
        assert!(
            !JoinToken::parse("node:abcdef.0123456789abcdef")
                .unwrap()
                .is_bootstrap()
        );
        assert!(!t.accepts("node", "nope") && !t.accepts("admin", &t.password));
    }

    #[test]
    fn token_file_is_created_kept_and_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let ca = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";
        let first = load_or_create(dir.path(), ca, None).unwrap();
        let text = std::fs::read_to_string(dir.path().join("token")).unwrap();
        assert_eq!(text.trim(), first.to_string());
        assert!(text.starts_with(&format!("K10{}::server:", ca_hash(ca))));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let via_link = std::fs::read_to_string(dir.path().join("node-token")).unwrap();
        assert_eq!(via_link, text);
        // Restarts keep it.
        assert_eq!(load_or_create(dir.path(), ca, None).unwrap(), first);
        // --token (short form) wins and is written in the full form.
        let given = load_or_create(dir.path(), ca, Some("s3cret")).unwrap();
        assert_eq!(given.password, "s3cret");
        assert_eq!(given.ca_hash.as_deref(), Some(ca_hash(ca).as_str()));
        // A token pinning another CA is refused.
        let other = JoinToken::generate("another CA", "server").to_string();
        let err = load_or_create(dir.path(), ca, Some(&other)).unwrap_err();
        assert!(matches!(err, JoinTokenError::CaHash { .. }), "{err}");
        // A bootstrap token cannot be the server token.
        let err = load_or_create(dir.path(), ca, Some("abcdef.0123456789abcdef")).unwrap_err();
        assert!(matches!(err, JoinTokenError::Bootstrap), "{err}");
        // The agent token: none until given, then kept.
        assert!(load_agent_token(dir.path(), ca, None).unwrap().is_none());
        let agent = load_agent_token(dir.path(), ca, Some("agentsecret"))
            .unwrap()
            .unwrap();
        assert_eq!(agent.username, "node");
        assert!(agent.to_string().ends_with("::node:agentsecret"));
        assert_eq!(load_agent_token(dir.path(), ca, None).unwrap(), Some(agent));
    }
}
