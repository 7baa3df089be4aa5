//! Secrets at rest. With `ROUTER_ENCRYPTION_KEY` (32 random bytes, standard
//! base64) webhook secrets and access tokens are stored sealed with
//! AES-256-GCM, in the database and in the accounts bucket:
//! `enc:v1:<base64(nonce ‖ ciphertext ‖ tag)>`. A value without that prefix
//! is plaintext (written before a key was set) and is read as it is.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "enc:v1:";

/// The encryption key. Debug never shows it.
#[derive(Clone)]
pub struct SecretBox {
    key: [u8; 32],
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
        "the value cannot be decrypted with ROUTER_ENCRYPTION_KEY (wrong key or damaged value)"
    )]
    Undecryptable,
}

impl SecretBox {
    /// Parses `ROUTER_ENCRYPTION_KEY`.
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|_| "must be standard base64 (e.g. `openssl rand -base64 32`)".to_owned())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            "must encode exactly 32 bytes (e.g. `openssl rand -base64 32`)".to_owned()
        })?;
        Ok(Self { key })
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).expect("32-byte AES key"))
    }

    /// Seals a secret; a fresh random nonce each time.
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random generator works");
        let mut data = plaintext.as_bytes().to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("sealing cannot fail for in-memory data");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{PREFIX}{}", B64.encode(out))
    }

    fn open_sealed(&self, encoded: &str) -> Result<String, SecretError> {
        let raw = B64
            .decode(encoded)
            .map_err(|_| SecretError::Undecryptable)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Undecryptable);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Undecryptable)?;
        let mut data = sealed.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| SecretError::Undecryptable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Undecryptable)
    }
}

/// Seals with the key when there is one; plaintext otherwise.
pub fn seal(key: Option<&SecretBox>, plaintext: &str) -> String {
    match key {
        Some(k) => k.seal(plaintext),
        None => plaintext.to_owned(),
    }
}

/// Whether a stored value is sealed (written by a service with the key).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// Opens a stored value: sealed ones need the key, plaintext passes through.
pub fn open(key: Option<&SecretBox>, stored: &str) -> Result<String, SecretError> {
    match (stored.strip_prefix(PREFIX), key) {
        (None, _) => Ok(stored.to_owned()),
        (Some(_), None) => Err(SecretError::KeyMissing),
        (Some(encoded), Some(k)) => k.open_sealed(encoded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretBox {
        SecretBox::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_the_key() {
        let sealed = seal(Some(&key()), "whsec_abc");
        assert!(sealed.starts_with("enc:v1:") && !sealed.contains("whsec_abc"));
        assert_ne!(
            sealed,
            seal(Some(&key()), "whsec_abc"),
            "a fresh nonce each time"
        );
        assert_eq!(open(Some(&key()), &sealed).unwrap(), "whsec_abc");
        assert_eq!(open(None, &sealed), Err(SecretError::KeyMissing));
        let other = SecretBox::from_base64("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=").unwrap();
        assert_eq!(open(Some(&other), &sealed), Err(SecretError::Undecryptable));
        assert_eq!(
            open(Some(&key()), "plain-old-value").unwrap(),
            "plain-old-value"
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(SecretBox::from_base64("c2hvcnQ=").is_err());
        assert!(SecretBox::from_base64("not base64!").is_err());
        assert!(!format!("{:?}", key()).contains("MDEy"));
    }
}
