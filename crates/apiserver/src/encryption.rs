//! Encryption at rest: upstream's `EncryptionConfiguration` (`apiserver.config.k8s.io/v1`)
//! and the value transformers it describes.
//!
//! A configuration lists, per group of resources, providers in order. The **first** provider's
//! first key encrypts what is written; **every** key of every provider can decrypt what is read,
//! picked by the prefix the value was stored with — upstream's format, so the stored bytes are
//! what kube-apiserver would write:
//!
//! - `aescbc`: `k8s:enc:aescbc:v1:<key name>:` + 16-byte random IV + AES-CBC(PKCS#7 padded);
//! - `aesgcm`: `k8s:enc:aesgcm:v1:<key name>:` + 12-byte random nonce + AES-GCM with the
//!   storage key (`/registry/secrets/ns/name`) as additional authenticated data;
//! - `identity`: the plain value (and it refuses to read a value starting with `k8s:enc:`).
//!
//! Resources are named as upstream: `secrets`, `deployments.apps`, `*.` (every core resource),
//! `*.apps`, `*.*`. A storage key is mapped to its group/resource through the registry's storage
//! prefixes (custom resources: `/registry/<group>/<plural>/`). Keys rk3s keeps for itself
//! (`/registry/rk3s/...`) are never transformed.

use std::collections::HashMap;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The prefix every encrypted value starts with.
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const AES_BLOCK: usize = 16;
const GCM_NONCE: usize = 12;

/// Upstream's `EncryptionConfiguration` file (YAML or JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfiguration {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub resources: Vec<ResourceConfiguration>,
}

/// One `resources[]` entry: which resources, and their providers in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceConfiguration {
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub providers: Vec<ProviderConfiguration>,
}

/// One provider: exactly one of the fields is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aesgcm: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbc: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretbox: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<serde_json::Value>,
}

/// `identity: {}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityConfiguration {}

/// The keys of an `aescbc`/`aesgcm`/`secretbox` provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysConfiguration {
    #[serde(default)]
    pub keys: Vec<Key>,
}

/// A named key; `secret` is base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub name: String,
    pub secret: String,
}

/// Why an encryption configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("encryption provider configuration {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encryption provider configuration {}: {reason}", path.display())]
    Parse {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A field has a value upstream refuses (the message names the field as upstream does).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A value that cannot be read back: upstream's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

fn terr(s: &str) -> TransformError {
    TransformError(s.to_string())
}

impl EncryptionConfiguration {
    /// Reads a configuration file (YAML or JSON) and checks it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: EncryptionConfiguration =
            serde_yaml::from_slice(&bytes).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        config.validate().map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// K3s' generated configuration: `secrets` with one new random AES-CBC key named
    /// `aescbckey`, then `identity` (so that values written before encryption was turned on
    /// still read).
    pub fn generate_aescbc() -> Self {
        EncryptionConfiguration {
            kind: "EncryptionConfiguration".into(),
            api_version: "apiserver.config.k8s.io/v1".into(),
            resources: vec![ResourceConfiguration {
                resources: vec!["secrets".into()],
                providers: vec![
                    ProviderConfiguration {
                        aescbc: Some(KeysConfiguration {
                            keys: vec![new_aescbc_key("aescbckey")],
                        }),
                        ..ProviderConfiguration::default()
                    },
                    ProviderConfiguration {
                        identity: Some(IdentityConfiguration {}),
                        ..ProviderConfiguration::default()
                    },
                ],
            }],
        }
    }

    /// Checks the configuration as upstream's validation does (the parts rk3s implements:
    /// `kms` and `secretbox` are refused).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kind != "EncryptionConfiguration" {
            return Err(invalid(
                "kind",
                format!(
                    "Invalid value: {:?}: must be EncryptionConfiguration",
                    self.kind
                ),
            ));
        }
        if self.api_version != "apiserver.config.k8s.io/v1" {
            return Err(invalid(
                "apiVersion",
                format!(
                    "Invalid value: {:?}: must be apiserver.config.k8s.io/v1",
                    self.api_version
                ),
            ));
        }
        if self.resources.is_empty() {
            return Err(invalid(
                "resources",
                "Required value: resources is a required field",
            ));
        }
        let mut seen: Vec<GroupResource> = Vec::new();
        for (i, rc) in self.resources.iter().enumerate() {
            if rc.resources.is_empty() {
                return Err(invalid(
                    format!("resources[{i}].resources"),
                    "Required value: resources is a required field",
                ));
            }
            for (j, r) in rc.resources.iter().enumerate() {
                let gr = GroupResource::parse(r).ok_or_else(|| {
                    invalid(
                        format!("resources[{i}].resources[{j}]"),
                        format!("Invalid value: {r:?}: resource name must be lower case"),
                    )
                })?;
                if let Some(earlier) = seen.iter().find(|e| e.covers(&gr)) {
                    return Err(invalid(
                        format!("resources[{i}].resources[{j}]"),
                        format!(
                            "Invalid value: {r:?}: resource {r:?} is masked by earlier rule {:?}",
                            earlier.to_string()
                        ),
                    ));
                }
                seen.push(gr);
            }
            if rc.providers.is_empty() {
                return Err(invalid(
                    format!("resources[{i}].providers"),
                    "Required value: provider must contain at least one provider",
                ));
            }
            for (p, provider) in rc.providers.iter().enumerate() {
                Provider::build(provider, &format!("resources[{i}].providers[{p}]"))?;
            }
        }
        Ok(())
    }

    /// The configuration as stored by `rk3s server --secrets-encryption` (JSON, as K3s).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The sha256 of the configuration's canonical JSON, as `rk3s secrets-encrypt status`
    /// shows it.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = sha2::Sha256::digest(&json);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `resources[]` entry that covers Secrets, if any.
    pub fn secrets_entry_mut(&mut self) -> Option<&mut ResourceConfiguration> {
        let secrets = GroupResource::parse("secrets")?;
        self.resources.iter_mut().find(|rc| {
            rc.resources
                .iter()
                .filter_map(|r| GroupResource::parse(r))
                .any(|gr| gr.covers(&secrets))
        })
    }
}

/// A new AES-256 key (32 random bytes) for an `aescbc` provider.
pub fn new_aescbc_key(name: &str) -> Key {
    let secret: [u8; 32] = rand::random();
    Key {
        name: name.to_string(),
        secret: base64::engine::general_purpose::STANDARD.encode(secret),
    }
}

/// A group/resource as named in `resources[].resources`; `*` for wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupResource {
    group: String,
    resource: String,
}

impl GroupResource {
    /// `secrets` → ("", secrets); `deployments.apps` → (apps, deployments); `*.` → ("", *);
    /// `*.apps` → (apps, *); `*.*` → (*, *).
    fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s != s.to_lowercase() {
            return None;
        }
        let (resource, group) = match s.split_once('.') {
            Some((r, g)) => (r, g),
            None => (s, ""),
        };
        if resource.is_empty() || (group == "*" && resource != "*") {
            return None;
        }
        if resource == "*" && s == "*" {
            return None;
        }
        Some(GroupResource {
            group: group.into(),
            resource: resource.into(),
        })
    }

    /// Whether this rule applies to `other` (itself a rule or a concrete resource).
    fn covers(&self, other: &GroupResource) -> bool {
        (self.group == "*" || self.group == other.group)
            && (self.resource == "*" || self.resource == other.resource)
    }
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() && self.resource != "*" {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One key of a provider, ready to use.
#[derive(Clone)]
enum Cipher {
    Identity,
    AesCbc([u8; 32]),
    AesGcm(AesGcmKey),
}

#[derive(Clone)]
enum AesGcmKey {
    K128(Box<aes_gcm::Aes128Gcm>),
    K192(Box<aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>>),
    K256(Box<aes_gcm::Aes256Gcm>),
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            Cipher::Identity => "Identity",
            Cipher::AesCbc(_) => "AesCbc",
            Cipher::AesGcm(_) => "AesGcm",
        })
    }
}

/// A key with the prefix its values carry.
#[derive(Debug, Clone)]
struct Provider {
    prefix: Vec<u8>,
    /// `AES-CBC`, `AES-GCM`, `Identity` (what `secrets-encrypt status` prints).
    kind: &'static str,
    name: String,
    cipher: Cipher,
}

impl Provider {
    /// The providers (one per key) of one `providers[]` entry.
    fn build(config: &ProviderConfiguration, field: &str) -> Result<Vec<Provider>, ConfigError> {
        let set = [
            config.aesgcm.is_some(),
            config.aescbc.is_some(),
            config.secretbox.is_some(),
            config.identity.is_some(),
            config.kms.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            return Err(invalid(
                field,
                "Invalid value: \"providers\": more than one provider specified in a single element, should split into different list elements",
            ));
        }
        if config.identity.is_some() {
            return Ok(vec![Provider {
                prefix: Vec::new(),
                kind: "Identity",
                name: "identity".into(),
                cipher: Cipher::Identity,
            }]);
        }
        if config.kms.is_some() {
            return Err(invalid(
                format!("{field}.kms"),
                "Unsupported value: rk3s does not implement KMS providers",
            ));
        }
        if config.secretbox.is_some() {
            return Err(invalid(
                format!("{field}.secretbox"),
                "Unsupported value: rk3s implements aescbc, aesgcm and identity",
            ));
        }
        let (keys, tag, sizes, kind): (_, _, &[usize], _) = match (&config.aescbc, &config.aesgcm) {
            (Some(k), _) => (&k.keys, "aescbc", &[32], "AES-CBC"),
            (_, Some(k)) => (&k.keys, "aesgcm", &[16, 24, 32], "AES-GCM"),
            _ => return Err(invalid(field, "no provider")),
        };
        if keys.is_empty() {
            return Err(invalid(
                format!("{field}.{tag}.keys"),
                "Required value: keys (list of at least one key) is required",
            ));
        }
        let mut out = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            let kf = format!("{field}.{tag}.keys[{k}]");
            if key.name.is_empty() {
                return Err(invalid(
                    format!("{kf}.name"),
                    "Required value: key name is required",
                ));
            }
            if key.name.contains(':') {
                return Err(invalid(
                    format!("{kf}.name"),
                    format!(
                        "Invalid value: {:?}: key name must not contain \":\"",
                        key.name
                    ),
                ));
            }
            if keys[..k].iter().any(|o| o.name == key.name) {
                return Err(invalid(
                    format!("{kf}.name"),
                    format!("Duplicate value: {:?}", key.name),
                ));
            }
            let secret = base64::engine::general_purpose::STANDARD
                .decode(key.secret.trim())
                .map_err(|e| {
                    invalid(
                        format!("{kf}.secret"),
                        format!("Invalid value: \"REDACTED\": secret is not a valid base64: {e}"),
                    )
                })?;
            if !sizes.contains(&secret.len()) {
                return Err(invalid(
                    format!("{kf}.secret"),
                    format!(
                        "Invalid value: \"REDACTED\": secret is not of the expected length, got {}, expected one of {sizes:?}",
                        secret.len()
                    ),
                ));
            }
            let cipher = match tag {
                "aescbc" => {
                    let mut b = [0u8; 32];
                    b.copy_from_slice(&secret);
                    Cipher::AesCbc(b)
                }
                _ => Cipher::AesGcm(match secret.len() {
                    16 => AesGcmKey::K128(Box::new(
                        aes_gcm::Aes128Gcm::new_from_slice(&secret)
                            .map_err(|e| invalid(format!("{kf}.secret"), e.to_string()))?,
                    )),
                    24 => AesGcmKey::K192(Box::new(
                        aes_gcm::AesGcm::new_from_slice(&secret)
                            .map_err(|e| invalid(format!("{kf}.secret"), e.to_string()))?,
                    )),
                    _ => AesGcmKey::K256(Box::new(
                        aes_gcm::Aes256Gcm::new_from_slice(&secret)
                            .map_err(|e| invalid(format!("{kf}.secret"), e.to_string()))?,
                    )),
                }),
            };
            out.push(Provider {
                prefix: format!("k8s:enc:{tag}:v1:{}:", key.name).into_bytes(),
                kind,
                name: key.name.clone(),
                cipher,
            });
        }
        Ok(out)
    }

    fn encrypt(&self, data: &[u8], key: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut out = self.prefix.clone();
        match &self.cipher {
            Cipher::Identity => out.extend_from_slice(data),
            Cipher::AesCbc(k) => {
                let iv: [u8; AES_BLOCK] = rand::random();
                let pad = AES_BLOCK - data.len() % AES_BLOCK;
                let mut buf = Vec::with_capacity(data.len() + pad);
                buf.extend_from_slice(data);
                buf.extend(std::iter::repeat_n(pad as u8, pad));
                let enc = cbc::Encryptor::<aes::Aes256>::new(k.into(), &iv.into());
                let ct = enc.encrypt_padded_vec_mut::<NoPadding>(&buf);
                out.extend_from_slice(&iv);
                out.extend_from_slice(&ct);
            }
            Cipher::AesGcm(k) => {
                let nonce: [u8; GCM_NONCE] = rand::random();
                let payload = Payload {
                    msg: data,
                    aad: key,
                };
                let ct = match k {
                    AesGcmKey::K128(c) => c.encrypt(&nonce.into(), payload),
                    AesGcmKey::K192(c) => c.encrypt(&nonce.into(), payload),
                    AesGcmKey::K256(c) => c.encrypt(&nonce.into(), payload),
                }
                .map_err(|_| terr("unable to encrypt"))?;
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ct);
            }
        }
        Ok(out)
    }

    /// Decrypts `data` (without this provider's prefix).
    fn decrypt(&self, data: &[u8], key: &[u8]) -> Result<Vec<u8>, TransformError> {
        match &self.cipher {
            Cipher::Identity => {
                if data.starts_with(ENCRYPTED_PREFIX) {
                    return Err(terr("identity transformer tried to read encrypted data"));
                }
                Ok(data.to_vec())
            }
            Cipher::AesCbc(k) => {
                if data.len() < AES_BLOCK {
                    return Err(terr("the stored data was shorter than the required size"));
                }
                let (iv, ct) = data.split_at(AES_BLOCK);
                if ct.len() % AES_BLOCK != 0 {
                    return Err(terr("the stored data is not a multiple of the block size"));
                }
                let iv: [u8; AES_BLOCK] = iv
                    .try_into()
                    .map_err(|_| terr("the stored data was shorter than the required size"))?;
                let dec = cbc::Decryptor::<aes::Aes256>::new(k.into(), &iv.into());
                let mut plain = dec
                    .decrypt_padded_vec_mut::<NoPadding>(ct)
                    .map_err(|_| terr("the stored data is not a multiple of the block size"))?;
                let pad = plain.last().copied().unwrap_or(0) as usize;
                if pad == 0 || pad > plain.len() {
                    return Err(terr("invalid PKCS7 data (empty or not padded)"));
                }
                let size = plain.len() - pad;
                if plain[size..].iter().any(|b| *b as usize != pad) {
                    return Err(terr("invalid padding on input"));
                }
                plain.truncate(size);
                Ok(plain)
            }
            Cipher::AesGcm(k) => {
                if data.len() < GCM_NONCE {
                    return Err(terr("the stored data was shorter than the required size"));
                }
                let (nonce, ct) = data.split_at(GCM_NONCE);
                let nonce: [u8; GCM_NONCE] = nonce
                    .try_into()
                    .map_err(|_| terr("the stored data was shorter than the required size"))?;
                let nonce = nonce.into();
                let payload = Payload { msg: ct, aad: key };
                match k {
                    AesGcmKey::K128(c) => c.decrypt(&nonce, payload),
                    AesGcmKey::K192(c) => c.decrypt(&nonce, payload),
                    AesGcmKey::K256(c) => c.decrypt(&nonce, payload),
                }
                .map_err(|_| terr("cipher: message authentication failed"))
            }
        }
    }
}

/// The providers of one `resources[]` entry, in order (one per key).
#[derive(Debug, Clone)]
struct Providers(Vec<Provider>);

impl Providers {
    /// Upstream's prefix transformer: the first provider whose prefix the value has reads it
    /// (an identity provider that fails lets the others try). `stale`: not read with the write
    /// key.
    fn read(&self, data: &[u8], key: &[u8]) -> Result<(Vec<u8>, bool), TransformError> {
        let mut identity_err = None;
        for (i, p) in self.0.iter().enumerate() {
            if !data.starts_with(&p.prefix) {
                continue;
            }
            match p.decrypt(&data[p.prefix.len()..], key) {
                Err(e) if p.prefix.is_empty() => identity_err = Some(e),
                Ok(v) => return Ok((v, i != 0)),
                Err(e) => return Err(e),
            }
        }
        Err(identity_err.unwrap_or_else(|| terr("no matching prefix found")))
    }

    fn write(&self, data: &[u8], key: &[u8]) -> Result<Vec<u8>, TransformError> {
        match self.0.first() {
            Some(p) => p.encrypt(data, key),
            None => Ok(data.to_vec()),
        }
    }
}

/// One key of a configuration, as `secrets-encrypt status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `AES-CBC`, `AES-GCM` or `Identity`.
    pub kind: &'static str,
    pub name: String,
    /// Whether it encrypts what is written (the first of its entry).
    pub active: bool,
}

/// What a stored value was read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Read {
    /// Not written with the current write key (or not encrypted where it should be): a
    /// rewrite would change the stored bytes.
    pub(crate) stale: bool,
}

/// The transformers of a configuration, by storage key.
#[derive(Debug, Clone, Default)]
pub struct Transformer {
    /// The entries, in configuration order.
    entries: Vec<Providers>,
    /// Exact group/resource → entry.
    exact: HashMap<(String, String), usize>,
    /// Group wildcard (`*.apps`, `*.`) → entry.
    groups: HashMap<String, usize>,
    /// `*.*` → entry.
    any: Option<usize>,
    /// Storage prefix (`/registry/secrets/`) → group/resource of the built-ins, longest first.
    builtin: Vec<(String, String, String)>,
    /// The configuration it was built from (for status).
    config: Option<EncryptionConfiguration>,
}

impl Transformer {
    /// No encryption: every value is stored as is.
    pub fn identity() -> Self {
        Transformer::default()
    }

    /// The transformers of a checked configuration.
    pub fn new(config: &EncryptionConfiguration) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut t = Transformer {
            builtin: builtin_prefixes(),
            config: Some(config.clone()),
            ..Transformer::default()
        };
        for (i, rc) in config.resources.iter().enumerate() {
            let mut providers = Vec::new();
            for (p, pc) in rc.providers.iter().enumerate() {
                providers.extend(Provider::build(
                    pc,
                    &format!("resources[{i}].providers[{p}]"),
                )?);
            }
            t.entries.push(Providers(providers));
            for r in &rc.resources {
                let Some(gr) = GroupResource::parse(r) else {
                    continue;
                };
                match (gr.group.as_str(), gr.resource.as_str()) {
                    ("*", _) => {
                        t.any.get_or_insert(i);
                    }
                    (g, "*") => {
                        t.groups.entry(g.to_string()).or_insert(i);
                    }
                    (g, r) => {
                        t.exact.entry((g.to_string(), r.to_string())).or_insert(i);
                    }
                }
            }
        }
        Ok(t)
    }

    /// Reads and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::new(&EncryptionConfiguration::load(path)?)
    }

    /// Whether any resource is transformed at all.
    pub fn is_enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The configuration this was built from.
    pub fn config(&self) -> Option<&EncryptionConfiguration> {
        self.config.as_ref()
    }

    fn entry_for(&self, key: &[u8]) -> Option<&Providers> {
        if self.entries.is_empty() {
            return None;
        }
        let key = std::str::from_utf8(key).ok()?;
        let (group, resource) = self.group_resource(key)?;
        let i = self
            .exact
            .get(&(group.to_string(), resource.to_string()))
            .or_else(|| self.groups.get(group))
            .or(self.any.as_ref())?;
        self.entries.get(*i)
    }

    /// The group/resource a storage key belongs to; `None` for rk3s' own keys.
    fn group_resource<'a>(&'a self, key: &'a str) -> Option<(&'a str, &'a str)> {
        for (prefix, group, resource) in &self.builtin {
            if key.starts_with(prefix.as_str()) {
                return Some((group, resource));
            }
        }
        // A custom resource: /registry/<group>/<plural>/...
        let rest = key.strip_prefix("/registry/")?;
        let mut parts = rest.splitn(3, '/');
        let group = parts.next()?;
        let resource = parts.next()?;
        parts.next()?;
        group.contains('.').then_some((group, resource))
    }

    /// The bytes to store for `value` under `key`.
    pub fn transform_to_storage(
        &self,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<Vec<u8>, TransformError> {
        match self.entry_for(key) {
            Some(p) => p.write(&value, key),
            None => Ok(value),
        }
    }

    /// The value stored as `data` under `key`.
    pub(crate) fn transform_from_storage(
        &self,
        key: &[u8],
        data: Vec<u8>,
    ) -> Result<(Vec<u8>, Read), TransformError> {
        match self.entry_for(key) {
            Some(p) => {
                let (v, stale) = p.read(&data, key)?;
                Ok((v, Read { stale }))
            }
            // Not configured: a value still encrypted from an earlier configuration cannot be
            // read, as upstream (the identity transformer refuses it).
            None if data.starts_with(ENCRYPTED_PREFIX) => {
                Err(terr("identity transformer tried to read encrypted data"))
            }
            None => Ok((data, Read { stale: false })),
        }
    }

    /// The keys, per `resources[]` entry: (resources, keys), for status.
    pub fn describe(&self) -> Vec<(Vec<String>, Vec<KeyInfo>)> {
        let Some(config) = &self.config else {
            return Vec::new();
        };
        config
            .resources
            .iter()
            .zip(&self.entries)
            .map(|(rc, p)| {
                (
                    rc.resources.clone(),
                    p.0.iter()
                        .enumerate()
                        .map(|(i, p)| KeyInfo {
                            kind: p.kind,
                            name: p.name.clone(),
                            active: i == 0,
                        })
                        .collect(),
                )
            })
            .collect()
    }

    /// The storage prefixes (`/registry/secrets/`) of the built-in resources this
    /// configuration transforms, and whether custom resources may be transformed.
    pub(crate) fn prefixes(&self) -> (Vec<String>, bool) {
        let mut out: Vec<String> = self
            .builtin
            .iter()
            .filter(|(p, _, _)| self.entry_for(p.as_bytes()).is_some())
            .map(|(p, _, _)| p.clone())
            .collect();
        out.sort();
        out.dedup();
        let custom = self.any.is_some() || self.groups.keys().any(|g| g.contains('.'));
        let custom = custom || self.exact.keys().any(|(g, _)| g.contains('.'));
        (out, custom)
    }
}

/// `/registry/<storage>/` → (group, plural) of every built-in, longest prefix first.
fn builtin_prefixes() -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = crate::registry::REGISTRY
        .groups
        .iter()
        .flat_map(|gv| gv.resources.iter())
        .map(|r| {
            (
                format!("/registry/{}/", r.storage),
                r.group.to_string(),
                r.plural.to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> EncryptionConfiguration {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    const KEY1: &str = "c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbyAhISE="; // 32 bytes
    const KEY2: &str = "dGhpcyBpcyBhbm90aGVyIDMyIGJ5dGUga2V5ICEhISE="; // 32 bytes

    fn two_keys(first: &str) -> EncryptionConfiguration {
        config(&format!(
            "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets, configmaps]\n  providers:\n  - {first}:\n      keys:\n      - name: k1\n        secret: {KEY1}\n      - name: k2\n        secret: {KEY2}\n  - identity: {{}}\n"
        ))
    }

    #[test]
    fn aescbc_round_trip_with_upstream_prefix() {
        let t = Transformer::new(&two_keys("aescbc")).expect("valid");
        let key = b"/registry/secrets/default/s";
        let stored = t
            .transform_to_storage(key, b"{\"a\":1}".to_vec())
            .expect("encrypts");
        assert!(stored.starts_with(b"k8s:enc:aescbc:v1:k1:"));
        // IV + one block.
        assert_eq!(stored.len(), "k8s:enc:aescbc:v1:k1:".len() + 16 + 16);
        let (back, read) = t.transform_from_storage(key, stored).expect("decrypts");
        assert_eq!(back, b"{\"a\":1}");
        assert!(!read.stale);
    }

    #[test]
    fn aesgcm_binds_the_storage_key() {
        let t = Transformer::new(&two_keys("aesgcm")).expect("valid");
        let key = b"/registry/configmaps/default/c";
        let stored = t
            .transform_to_storage(key, b"{}".to_vec())
            .expect("encrypts");
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        assert_eq!(
            t.transform_from_storage(key, stored.clone())
                .expect("reads")
                .0,
            b"{}"
        );
        let err = t
            .transform_from_storage(b"/registry/configmaps/default/other", stored)
            .expect_err("other key");
        assert_eq!(err.0, "cipher: message authentication failed");
    }

    #[test]
    fn second_key_reads_and_marks_stale() {
        let t = Transformer::new(&two_keys("aescbc")).expect("valid");
        let mut rotated = two_keys("aescbc");
        rotated.resources[0].providers[0]
            .aescbc
            .as_mut()
            .expect("aescbc")
            .keys
            .reverse();
        let r = Transformer::new(&rotated).expect("valid");
        let key = b"/registry/secrets/ns/s";
        let stored = t
            .transform_to_storage(key, b"{}".to_vec())
            .expect("encrypts");
        let (v, read) = r
            .transform_from_storage(key, stored)
            .expect("k1 still reads");
        assert_eq!(v, b"{}");
        assert!(read.stale);
        // Plain values read through the identity provider, stale too.
        let (_, read) = r
            .transform_from_storage(key, b"{}".to_vec())
            .expect("plain");
        assert!(read.stale);
    }

    #[test]
    fn missing_key_and_wrong_key_are_errors_not_garbage() {
        let t = Transformer::new(&two_keys("aescbc")).expect("valid");
        let key = b"/registry/secrets/ns/s";
        let stored = t
            .transform_to_storage(key, b"{\"x\":\"y\"}".to_vec())
            .expect("encrypts");
        // Only identity: upstream's message.
        let plain = Transformer::new(&config(
            "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n",
        ))
        .expect("valid");
        assert_eq!(
            plain
                .transform_from_storage(key, stored.clone())
                .expect_err("no key")
                .0,
            "identity transformer tried to read encrypted data"
        );
        // Same key name, other secret.
        let mut wrong = two_keys("aescbc");
        wrong.resources[0].providers[0]
            .aescbc
            .as_mut()
            .expect("aescbc")
            .keys[0]
            .secret = KEY2.into();
        wrong.resources[0].providers.pop();
        let wrong = Transformer::new(&wrong).expect("valid");
        let err = wrong
            .transform_from_storage(key, stored)
            .expect_err("wrong key");
        assert!(
            err.0 == "invalid padding on input"
                || err.0 == "invalid PKCS7 data (empty or not padded)",
            "{err}"
        );
        // No provider with that prefix and no identity.
        let e = wrong
            .transform_from_storage(
                key,
                b"k8s:enc:aescbc:v1:gone:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_vec(),
            )
            .expect_err("unknown key");
        assert_eq!(e.0, "no matching prefix found");
    }

    #[test]
    fn only_configured_resources_are_transformed() {
        let t = Transformer::new(&two_keys("aescbc")).expect("valid");
        let pod = t
            .transform_to_storage(b"/registry/pods/ns/p", b"{}".to_vec())
            .expect("ok");
        assert_eq!(pod, b"{}");
        let own = t
            .transform_to_storage(b"/registry/rk3s/serviceips/10.43.0.1", b"x".to_vec())
            .expect("ok");
        assert_eq!(own, b"x");
        let (p, _) = t.prefixes();
        assert_eq!(p, vec!["/registry/configmaps/", "/registry/secrets/"]);
    }

    #[test]
    fn wildcards_as_upstream() {
        let t = Transformer::new(&config(&format!(
            "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: ['*.apps']\n  providers:\n  - aesgcm: {{keys: [{{name: a, secret: {KEY1}}}]}}\n- resources: ['*.']\n  providers:\n  - aescbc: {{keys: [{{name: c, secret: {KEY1}}}]}}\n- resources: ['*.*']\n  providers:\n  - aescbc: {{keys: [{{name: any, secret: {KEY2}}}]}}\n"
        )))
        .expect("valid");
        let w = |k: &str| {
            t.transform_to_storage(k.as_bytes(), b"{}".to_vec())
                .expect("ok")
        };
        assert!(w("/registry/deployments/ns/d").starts_with(b"k8s:enc:aesgcm:v1:a:"));
        assert!(w("/registry/services/specs/ns/s").starts_with(b"k8s:enc:aescbc:v1:c:"));
        assert!(w("/registry/minions/n").starts_with(b"k8s:enc:aescbc:v1:c:"));
        assert!(
            w("/registry/stable.example.com/crontabs/ns/c").starts_with(b"k8s:enc:aescbc:v1:any:")
        );
        assert!(w("/registry/leases/kube-node-lease/n").starts_with(b"k8s:enc:aescbc:v1:any:"));
    }

    #[test]
    fn validation_as_upstream() {
        let bad = config(
            "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: [{name: k, secret: c2hvcnQ=}]}\n",
        );
        let e = bad.validate().expect_err("short key").to_string();
        assert!(
            e.contains("resources[0].providers[0].aescbc.keys[0].secret"),
            "{e}"
        );
        assert!(e.contains("got 5, expected one of [32]"), "{e}");
        let masked = config(
            "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: ['*.']\n  providers: [{identity: {}}]\n- resources: [secrets]\n  providers: [{identity: {}}]\n",
        );
        let e = masked.validate().expect_err("masked").to_string();
        assert!(e.contains("masked by earlier rule"), "{e}");
        let kms = config(
            "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers: [{kms: {name: x}}]\n",
        );
        assert!(kms.validate().is_err());
    }

    #[test]
    fn generated_config_is_valid_and_k3s_shaped() {
        let c = EncryptionConfiguration::generate_aescbc();
        c.validate().expect("valid");
        let json = c.to_json();
        let back: EncryptionConfiguration = serde_json::from_str(&json).expect("json");
        assert_eq!(back, c);
        assert!(json.contains("\"aescbckey\""));
        assert_eq!(c.hash().len(), 64);
    }
}
