//! The encryption secret: where DevLake reads it (the `.env` in the bound config directory,
//! product-facts §4.2) and whether it still opens what the database stores (§4.3, checked on
//! apache/incubator-devlake `backend/core/plugin/plugin_utils.go@v1.0.3`, identical in the
//! format at `v0.17.0` and `plugins/core/plugin_utils.go@v0.14.0`): AES-256-CBC, key = SHA-256
//! of the secret, IV = the first 16 bytes of that key (not stored), the marker `{nddtf}`
//! appended to the plaintext, PKCS#7 padding, standard Base64 of the ciphertext alone.

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use upshift_adapter_sdk::{AdapterError, error, live};

/// The files binding holding the `.env`.
pub const CONFIG: &str = "config";

/// Where the `.env` may be inside the bound directory (`/app/.env`, `/app/config/.env`).
const CANDIDATES: &[&str] = &[".env", "config/.env"];

/// What the `.env` says about the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSecrets {
    /// Which file was read.
    pub file: Option<String>,
    /// `ENCRYPTION_SECRET` (≥ v0.18).
    pub encryption_secret: Option<String>,
    /// `ENCODE_KEY` (≤ v0.17).
    pub encode_key: Option<String>,
}

/// Parse `.env` text (with a well-kept dotenv parser).
pub fn parse_env(text: &str) -> Result<EnvSecrets, AdapterError> {
    let mut out = EnvSecrets::default();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        let (key, value) = item.map_err(|e| error(format!("the .env does not parse: {e}")))?;
        let value = Some(value).filter(|v| !v.is_empty());
        match key.as_str() {
            "ENCRYPTION_SECRET" => out.encryption_secret = value,
            "ENCODE_KEY" => out.encode_key = value,
            _ => {}
        }
    }
    Ok(out)
}

/// Read the `.env` from the config binding.
pub fn read_env() -> Result<EnvSecrets, AdapterError> {
    for candidate in CANDIDATES {
        if let Some(text) = live::read_text(CONFIG, candidate)? {
            return Ok(EnvSecrets {
                file: Some((*candidate).to_string()),
                ..parse_env(&text)?
            });
        }
    }
    Ok(EnvSecrets::default())
}

/// The secret a version reads: `ENCRYPTION_SECRET` from v0.18, `ENCODE_KEY` before.
pub fn secret_for(env: &EnvSecrets, reads_encryption_secret: bool) -> Option<&str> {
    if reads_encryption_secret {
        env.encryption_secret.as_deref()
    } else {
        env.encode_key.as_deref()
    }
}

/// The 7 bytes DevLake appends before encrypting (123 110 100 100 116 102 125).
const MARKER: &[u8] = b"{nddtf}";

/// What a stored `encdec` value says when opened with a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// It decrypts and carries DevLake's marker: the secret is the one that wrote it.
    Opens,
    /// It is in DevLake's format (Base64 of whole AES blocks) but does not open: DevLake
    /// answers "invalid encryptionSecret" ("invalid encKey" ≤ v0.17), a changed or lost secret.
    WrongSecret,
    /// It is not in the format DevLake writes (why): no secret opens it, and DevLake fails on it
    /// with a Base64 or block-size error, not with a wrong-secret one.
    Undecodable(String),
}

/// Open `stored` (an `encdec` field) with `secret`, as DevLake's `Decrypt` does.
pub fn open(secret: &str, stored: &str) -> Opening {
    let bytes = match STANDARD.decode(stored.trim()) {
        Ok(bytes) => bytes,
        Err(e) => return Opening::Undecodable(format!("it is not standard Base64 ({e})")),
    };
    if bytes.is_empty() || bytes.len() % 16 != 0 {
        return Opening::Undecodable(format!(
            "it decodes to {} byte(s), not a whole number of 16-byte AES blocks",
            bytes.len()
        ));
    }
    let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let Ok(decryptor) = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &key[..16]) else {
        return Opening::WrongSecret;
    };
    let Ok(mut plain) = decryptor.decrypt_padded_vec_mut::<NoPadding>(&bytes) else {
        return Opening::WrongSecret;
    };
    // DevLake's unpadding is lenient: a pad byte at least the length empties the text.
    let pad = usize::from(plain.last().copied().unwrap_or(0));
    if pad >= plain.len() {
        plain.clear();
    } else {
        plain.truncate(plain.len() - pad);
    }
    if plain.ends_with(MARKER) {
        Opening::Opens
    } else {
        Opening::WrongSecret
    }
}

/// Whether `stored` (an `encdec` field) decrypts with `secret`.
pub fn opens(secret: &str, stored: &str) -> bool {
    open(secret, stored) == Opening::Opens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_and_quotes() {
        let env = parse_env("# DevLake\nDB_URL=mysql://merico:merico@mysql:3306/lake?charset=utf8mb4\nENCRYPTION_SECRET=\"s3cr3t value\"\nENCODE_KEY=\n").expect("parses");
        assert_eq!(env.encryption_secret.as_deref(), Some("s3cr3t value"));
        assert_eq!(env.encode_key, None);
        assert_eq!(secret_for(&env, true), Some("s3cr3t value"));
        assert_eq!(secret_for(&env, false), None);
    }

    #[test]
    fn garbage_never_opens() {
        assert!(!opens("secret", "not base64!"));
        assert!(!opens("secret", "c2hvcnQ="));
    }

    #[test]
    fn opens_what_devlake_writes_and_tells_a_wrong_secret_from_an_unknown_format() {
        // `Encrypt("s3cret", "ghp_token")` as DevLake computes it.
        use aes::cipher::{BlockEncryptMut, block_padding::Pkcs7};
        let key: [u8; 32] = Sha256::digest(b"s3cret").into();
        let sealed = STANDARD.encode(
            cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &key[..16])
                .expect("key")
                .encrypt_padded_vec_mut::<Pkcs7>(b"ghp_token{nddtf}"),
        );
        assert_eq!(open("s3cret", &sealed), Opening::Opens);
        assert_eq!(open("another", &sealed), Opening::WrongSecret);
        assert!(
            matches!(open("s3cret", "ghp_plaintext"), Opening::Undecodable(w) if w.contains("Base64"))
        );
        assert!(
            matches!(open("s3cret", "c2hvcnQ="), Opening::Undecodable(w) if w.contains("AES blocks"))
        );
        assert!(matches!(open("s3cret", ""), Opening::Undecodable(_)));
    }
}
