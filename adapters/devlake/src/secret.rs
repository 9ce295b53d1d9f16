//! The encryption secret: where DevLake reads it (the `.env` in the bound config directory,
//! product-facts §4.2) and whether it still opens what the database stores (§4.3: AES-CBC with
//! the SHA-256 of the secret as key and a marker suffix, Base64; the IV is stored in front).

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
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

const MARKER: &[u8] = b"encdec1";

/// Whether `stored` (an `encdec` field) decrypts with `secret`.
pub fn opens(secret: &str, stored: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(stored.trim()) else {
        return false;
    };
    if bytes.len() < 32 {
        return false;
    }
    let (iv, sealed) = bytes.split_at(16);
    let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let Ok(decryptor) = cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, iv) else {
        return false;
    };
    decryptor
        .decrypt_padded_vec_mut::<Pkcs7>(sealed)
        .is_ok_and(|plain| plain.ends_with(MARKER))
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
}
