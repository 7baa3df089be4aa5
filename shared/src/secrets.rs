//! Secrets at rest. With `ROUTER_ENCRYPTION_KEY` (32 random bytes, standard
//! base64) webhook secrets and access tokens are stored sealed with
//! AES-256-GCM, in the database and in the accounts bucket:
//! `enc:v2:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, where the key id
//! names the key (8 hex digits of a hash of it, never the key), and the
//! associated data binds the value to its account and field
//! (`<account_id>/<field>`), so a sealed value copied to another account or
//! field does not open.
//!
//! Older keys listed in `ROUTER_ENCRYPTION_KEY_PREVIOUS` still open what
//! they sealed; ingest re-seals such values with the current key when it
//! starts. Values written before key ids (`enc:v1:<base64>`, no associated
//! data) open with any configured key, and are re-sealed the same way. A
//! value without either prefix is plaintext (written before a key was set)
//! and is read as it is.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const V1: &str = "enc:v1:";
const V2: &str = "enc:v2:";

/// One AES-256 key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    bytes: [u8; 32],
}

impl Key {
    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).expect("32-byte AES key"))
    }

    fn open(&self, raw: &[u8], context: &[u8]) -> Option<String> {
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = sealed.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(context), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The encryption keys: the current one, which seals, and older ones that
/// only open. Debug never shows a key.
#[derive(Clone)]
pub struct SecretBox {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecretError {
    #[error("the value is encrypted but ROUTER_ENCRYPTION_KEY is not set")]
    KeyMissing,
    #[error(
        "the value was sealed with key {0}, which is neither ROUTER_ENCRYPTION_KEY nor in ROUTER_ENCRYPTION_KEY_PREVIOUS"
    )]
    UnknownKey(String),
    #[error(
        "the value cannot be decrypted with ROUTER_ENCRYPTION_KEY (wrong key, damaged value, or a value moved from another account or field)"
    )]
    Undecryptable,
}

/// The associated data of a sealed value: its account and field.
pub fn context(account_id: &str, field: &str) -> String {
    format!("{account_id}/{field}")
}

impl SecretBox {
    /// Parses `ROUTER_ENCRYPTION_KEY`.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let decoded = B64
            .decode(s.trim())
            .map_err(|_| "must be standard base64 (e.g. `openssl rand -base64 32`)".to_owned())?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|_| {
            "must encode exactly 32 bytes (e.g. `openssl rand -base64 32`)".to_owned()
        })?;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest([b"router-key-id:".as_slice(), &bytes].concat());
        Ok(Self {
            current: Key {
                id: hex::encode(&digest[..4]),
                bytes,
            },
            previous: Vec::new(),
        })
    }

    /// Adds older keys, which open what they sealed but never seal.
    pub fn with_previous(mut self, older: impl IntoIterator<Item = SecretBox>) -> Self {
        self.previous.extend(older.into_iter().map(|k| k.current));
        self
    }

    /// The id of the key that seals: 8 hex digits, safe to log.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// Seals a secret for its account and field; a fresh random nonce each time.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random generator works");
        let mut data = plaintext.as_bytes().to_vec();
        self.current
            .aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing cannot fail for in-memory data");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{V2}{}:{}", self.current.id, B64.encode(out))
    }

    fn open_sealed(&self, stored: &str, context: &str) -> Result<String, SecretError> {
        if let Some(rest) = stored.strip_prefix(V2) {
            let (id, encoded) = rest.split_once(':').ok_or(SecretError::Undecryptable)?;
            let key = self
                .keys()
                .find(|k| k.id == id)
                .ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
            let raw = B64
                .decode(encoded)
                .map_err(|_| SecretError::Undecryptable)?;
            return key
                .open(&raw, context.as_bytes())
                .ok_or(SecretError::Undecryptable);
        }
        let encoded = stored.strip_prefix(V1).ok_or(SecretError::Undecryptable)?;
        let raw = B64
            .decode(encoded)
            .map_err(|_| SecretError::Undecryptable)?;
        self.keys()
            .find_map(|k| k.open(&raw, b""))
            .ok_or(SecretError::Undecryptable)
    }
}

/// Seals with the key when there is one; plaintext otherwise.
pub fn seal(key: Option<&SecretBox>, plaintext: &str, context: &str) -> String {
    match key {
        Some(k) => k.seal(plaintext, context),
        None => plaintext.to_owned(),
    }
}

/// Whether a stored value is sealed (written by a service with a key).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(V1) || stored.starts_with(V2)
}

/// Whether a stored value should be sealed again: it is plaintext while a
/// key is set, or sealed the old way or with another key than the current.
pub fn needs_reseal(key: Option<&SecretBox>, stored: &str) -> bool {
    let Some(key) = key else {
        return false;
    };
    match stored.strip_prefix(V2) {
        Some(rest) => rest
            .split_once(':')
            .is_none_or(|(id, _)| id != key.key_id()),
        None => true,
    }
}

/// Opens a stored value of its account and field: sealed ones need the
/// key, plaintext passes through.
pub fn open(key: Option<&SecretBox>, stored: &str, context: &str) -> Result<String, SecretError> {
    match (is_sealed(stored), key) {
        (false, _) => Ok(stored.to_owned()),
        (true, None) => Err(SecretError::KeyMissing),
        (true, Some(k)) => k.open_sealed(stored, context),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretBox {
        SecretBox::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap()
    }

    fn other() -> SecretBox {
        SecretBox::from_base64("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=").unwrap()
    }

    const HERE: &str = "acc_1/webhook_secret";

    #[test]
    fn sealed_values_open_only_with_the_key_for_their_account_and_field() {
        let sealed = seal(Some(&key()), "whsec_abc", HERE);
        assert!(sealed.starts_with(&format!("enc:v2:{}:", key().key_id())));
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(
            sealed,
            seal(Some(&key()), "whsec_abc", HERE),
            "a fresh nonce each time"
        );
        assert_eq!(open(Some(&key()), &sealed, HERE).unwrap(), "whsec_abc");
        assert_eq!(open(None, &sealed, HERE), Err(SecretError::KeyMissing));
        assert_eq!(
            open(Some(&other()), &sealed, HERE),
            Err(SecretError::UnknownKey(key().key_id().to_owned()))
        );
        // Moved to another account or another field: refused.
        for elsewhere in ["acc_2/webhook_secret", "acc_1/instagram_access_token"] {
            assert_eq!(
                open(Some(&key()), &sealed, elsewhere),
                Err(SecretError::Undecryptable)
            );
        }
        assert_eq!(
            open(Some(&key()), "plain-old-value", HERE).unwrap(),
            "plain-old-value"
        );
    }

    #[test]
    fn a_previous_key_opens_what_it_sealed_and_such_values_are_resealed() {
        let old = seal(Some(&key()), "whsec_abc", HERE);
        let rotated = other().with_previous([key()]);
        assert_eq!(open(Some(&rotated), &old, HERE).unwrap(), "whsec_abc");
        assert!(needs_reseal(Some(&rotated), &old));
        let new = seal(Some(&rotated), "whsec_abc", HERE);
        assert!(new.starts_with(&format!("enc:v2:{}:", other().key_id())));
        assert!(!needs_reseal(Some(&rotated), &new));
        assert!(needs_reseal(Some(&rotated), "plain-old-value"));
        assert!(!needs_reseal(None, "plain-old-value"));
        assert_ne!(key().key_id(), other().key_id());
    }

    #[test]
    fn values_sealed_before_key_ids_still_open() {
        // enc:v1: as written by earlier versions: no key id, no associated data.
        let k = key();
        let mut nonce = [7u8; NONCE_LEN];
        nonce[0] = 1;
        let mut data = b"whsec_abc".to_vec();
        k.current
            .aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .unwrap();
        let v1 = format!("enc:v1:{}", B64.encode([nonce.as_slice(), &data].concat()));
        assert_eq!(open(Some(&k), &v1, HERE).unwrap(), "whsec_abc");
        assert_eq!(
            open(Some(&other().with_previous([key()])), &v1, HERE).unwrap(),
            "whsec_abc"
        );
        assert_eq!(
            open(Some(&other()), &v1, HERE),
            Err(SecretError::Undecryptable)
        );
        assert!(needs_reseal(Some(&k), &v1));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(SecretBox::from_base64("c2hvcnQ=").is_err());
        assert!(SecretBox::from_base64("not base64!").is_err());
        assert!(!format!("{:?}", key()).contains("MDEy"));
    }
}
