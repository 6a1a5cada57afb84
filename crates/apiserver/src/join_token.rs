//! K3s join tokens: `K10<sha256 of the CA bundle, hex>::<username>:<password>` (full form) or
//! just `<password>` / `<username>:<password>` (short form, which pins no CA). A joining node
//! checks the CA it downloads against the hash before trusting anything from the server.
//! (Only the format and the check live here: issuing node credentials over it is not built.)

use sha2::Digest as _;

const PREFIX: &str = "K10";
/// The username a short token stands for.
const DEFAULT_USER: &str = "server";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the server CA bundle, when the token pins it.
    pub ca_hash: Option<String>,
    /// `server` (servers joining) or `node` (agents).
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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinTokenError {
    #[error("invalid token format: {0}")]
    Format(&'static str),
    #[error("token CA hash does not match the cluster CA certificate hash: {expected} != {actual}")]
    CaHash { expected: String, actual: String },
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
            None => (DEFAULT_USER, creds),
        };
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

impl std::fmt::Display for JoinToken {
    /// The full form when a CA is pinned, else `<username>:<password>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ca_hash {
            Some(h) => write!(f, "{PREFIX}{h}::{}:{}", self.username, self.password),
            None => write!(f, "{}:{}", self.username, self.password),
        }
    }
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
    }
}
