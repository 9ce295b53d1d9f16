//! DevLake's `encdec` serializer as product-facts §4.3 describes it: AES-CBC with the SHA-256 of
//! the encryption secret as key, a marker suffix, then Base64. A wrong key is detectable and
//! reported as DevLake does ("invalid encKey").

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

type Enc = cbc::Encryptor<aes::Aes256>;
type Dec = cbc::Decryptor<aes::Aes256>;

/// The 7-byte marker appended before encryption.
const MARKER: &[u8; 7] = b"encdec1";

fn key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Encrypt `plain` with `secret`. The IV is derived from the secret and the text (simulation: no
/// randomness needed); it is stored in front of the ciphertext.
pub fn encrypt(secret: &str, plain: &str) -> String {
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&Sha256::digest(format!("{secret}\n{plain}").as_bytes())[..16]);
    let mut data = plain.as_bytes().to_vec();
    data.extend_from_slice(MARKER);
    let cipher = Enc::new(&key(secret).into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(&data);
    let mut out = iv.to_vec();
    out.extend_from_slice(&cipher);
    STANDARD.encode(out)
}

/// Decrypt, or DevLake's error when the secret is not the one that encrypted it.
pub fn decrypt(secret: &str, stored: &str) -> Result<String, String> {
    let bytes = STANDARD
        .decode(stored)
        .map_err(|_| "invalid encKey".to_string())?;
    if bytes.len() < 32 {
        return Err("invalid encKey".into());
    }
    let (iv, cipher) = bytes.split_at(16);
    let mut iv_arr = [0u8; 16];
    iv_arr.copy_from_slice(iv);
    let plain = Dec::new(&key(secret).into(), &iv_arr.into())
        .decrypt_padded_vec_mut::<Pkcs7>(cipher)
        .map_err(|_| "invalid encKey".to_string())?;
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
        assert_eq!(decrypt("other", &stored), Err("invalid encKey".into()));
        assert_eq!(
            decrypt("s3cret", "not base64!"),
            Err("invalid encKey".into())
        );
    }
}
