//! DevLake's `encdec` serializer, in the format upstream writes (product-facts §4.3, checked on
//! apache/incubator-devlake `backend/core/plugin/plugin_utils.go@v1.0.3`, the same at `v0.17.0`
//! and `plugins/core/plugin_utils.go@v0.14.0`): key = SHA-256 of the secret (AES-256), IV = the
//! first 16 bytes of that key (not stored), the 7-byte marker `{nddtf}` appended to the
//! plaintext, PKCS#7 padding, standard Base64 of the ciphertext alone. So one secret and one
//! plaintext always give the same text.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// The 7-byte marker appended before encryption (bytes 123 110 100 100 116 102 125).
const MARKER: &[u8; 7] = b"{nddtf}";

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn iv(key: &[u8; 32]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    iv
}

/// Encrypt `plain` with `secret` as DevLake does.
pub fn encrypt(secret: &str, plain: &str) -> String {
    let k = key(secret);
    let mut data = plain.as_bytes().to_vec();
    data.extend_from_slice(MARKER);
    let cipher = Enc::new(&k.into(), &iv(&k).into()).encrypt_padded_vec_mut::<Pkcs7>(&data);
    STANDARD.encode(cipher)
}

/// Decrypt, or DevLake's error: Go's Base64 error for text that is not Base64, the block-size
/// error for a length that is not whole AES blocks, and "invalid encKey" when the marker is
/// missing (a wrong secret). Upstream's unpadding is lenient (a pad byte ≥ the length empties
/// the text, which then lacks the marker), and so is this.
pub fn decrypt(secret: &str, stored: &str) -> Result<String, String> {
    let bytes = STANDARD
        .decode(stored)
        .map_err(|e| format!("illegal base64 data: {e}"))?;
    if bytes.is_empty() || bytes.len() % 16 != 0 {
        return Err(format!(
            "The length of the data to be decrypted is [{}], so cannot match the required block size [16]",
            bytes.len()
        ));
    }
    let k = key(secret);
    let mut plain = Dec::new(&k.into(), &iv(&k).into())
        .decrypt_padded_vec_mut::<NoPadding>(&bytes)
        .map_err(|_| "invalid encKey".to_string())?;
    let pad = usize::from(plain.last().copied().unwrap_or(0));
    if pad >= plain.len() {
        plain.clear();
    } else {
        plain.truncate(plain.len() - pad);
    }
    let text = plain
        .strip_suffix(MARKER.as_slice())
        .ok_or_else(|| "invalid encKey".to_string())?;
    String::from_utf8(text.to_vec()).map_err(|_| "invalid encKey".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let stored = encrypt("s3cret", "ghp_token");
        assert_eq!(decrypt("s3cret", &stored), Ok("ghp_token".into()));
        assert_eq!(encrypt("s3cret", "ghp_token"), stored, "deterministic");
        // 9 + 7 bytes: one block exactly, then a full padding block.
        assert_eq!(STANDARD.decode(&stored).map(|b| b.len()), Ok(32));
        assert_eq!(decrypt("other", &stored), Err("invalid encKey".into()));
        assert!(decrypt("s3cret", "not base64!").is_err_and(|e| e.contains("base64")));
        assert!(decrypt("s3cret", "c2hvcnQ=").is_err_and(|e| e.contains("block size")));
    }
}
