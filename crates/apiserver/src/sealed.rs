//! Values sealed with the cluster's token, as K3s' bootstrap data: what the servers of one
//! datastore share (the CAs, the secrets-encryption configuration) is stored in the datastore
//! encrypted with a key only holders of the server token can derive.
//!
//! PBKDF2-HMAC-SHA256 ([`ITERATIONS`] rounds, a random 16-byte salt per value) derives an
//! AES-256-GCM key from the token's secret; a sealed value is `magic | salt | nonce |
//! ciphertext+tag`, the magic (which names the kind of value) also authenticated as AAD, so a
//! value of one kind is never read as another.

use std::num::NonZeroU32;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// PBKDF2 rounds.
pub const ITERATIONS: u32 = 100_000;
const SALT_LEN: usize = 16;

/// Why a value could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The value does not start with the expected magic or is too short.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// Authentication failed: another token, or a damaged value.
    #[error("cannot be decrypted with this token (damaged or another token)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

fn derive_key(secret: &str, salt: &[u8]) -> Result<LessSafeKey, SealError> {
    let mut key = [0u8; 32];
    let rounds = NonZeroU32::new(ITERATIONS).ok_or(SealError::Encrypt)?;
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        secret.as_bytes(),
        &mut key,
    );
    let key = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::Encrypt)?;
    Ok(LessSafeKey::new(key))
}

/// `plain` sealed with `secret`, marked `magic`.
pub fn seal(magic: &[u8], secret: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| SealError::Encrypt)?;
    rng.fill(&mut nonce).map_err(|_| SealError::Encrypt)?;
    let mut data = plain.to_vec();
    derive_key(secret, &salt)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(magic),
            &mut data,
        )
        .map_err(|_| SealError::Encrypt)?;
    let mut out = Vec::with_capacity(magic.len() + SALT_LEN + NONCE_LEN + data.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    Ok(out)
}

/// The plain bytes of a value [`seal`]ed with `secret` and `magic`.
pub fn open(magic: &[u8], secret: &str, value: &[u8]) -> Result<Vec<u8>, SealError> {
    let rest = value.strip_prefix(magic).ok_or(SealError::Malformed(
        "not the expected kind of sealed value",
    ))?;
    if rest.len() < SALT_LEN + NONCE_LEN {
        return Err(SealError::Malformed("too short"));
    }
    let (salt, rest) = rest.split_at(SALT_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed("bad nonce"))?;
    let mut sealed = sealed.to_vec();
    let plain = derive_key(secret, salt)?
        .open_in_place(nonce, Aad::from(magic), &mut sealed)
        .map_err(|_| SealError::Decrypt)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_other_token_and_other_kind() {
        let sealed = seal(b"kind-a", "secret", b"PLAINTEXT").expect("seal");
        assert!(!sealed.windows(9).any(|w| w == b"PLAINTEXT"));
        assert_eq!(
            open(b"kind-a", "secret", &sealed).expect("open"),
            b"PLAINTEXT"
        );
        assert_eq!(open(b"kind-a", "other", &sealed), Err(SealError::Decrypt));
        assert!(matches!(
            open(b"kind-b", "secret", &sealed),
            Err(SealError::Malformed(_))
        ));
        // Same length magic, other kind: the AAD differs.
        let mut relabelled = sealed.clone();
        relabelled[..6].copy_from_slice(b"kind-b");
        assert_eq!(
            open(b"kind-b", "secret", &relabelled),
            Err(SealError::Decrypt)
        );
    }
}
