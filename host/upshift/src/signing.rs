//! Signed adapters: Ed25519 signatures over a component's sha256, kept beside it in
//! `<file>.sig.json`, and the fleet file's trust policy (which keys, how many must have signed).
//! Verification is offline, happens before anything is compiled, and fails closed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// What is signed: a domain tag and the component's sha256, so a signature can never be taken
/// for anything but an Upshift adapter of exactly these bytes.
fn message(digest: &str) -> Vec<u8> {
    format!("upshift-adapter-v1:{digest}").into_bytes()
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterSignature {
    /// Who signed (a name for humans).
    pub signer: String,
    /// The public key, hex.
    pub key: String,
    /// The signature, hex.
    pub signature: String,
}

/// `<file>.sig.json`: the digest signed and every signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureFile {
    /// sha256 of the component, hex.
    pub digest: String,
    /// Signatures over it.
    pub signatures: Vec<AdapterSignature>,
}

/// How many trusted keys must have signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Require {
    /// Every listed key.
    All,
    /// At least this many of the listed keys.
    AtLeast(usize),
}

/// The fleet file's `[trust]`: adapter files run only when trusted keys signed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Trusted keys by name (hex public keys).
    pub keys: BTreeMap<String, String>,
    /// How many must have signed.
    pub require: Require,
}

/// Why an adapter is not trusted (or a key or file cannot be used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// No signature file.
    #[error(
        "adapter {path} is not signed ({sig} is missing) and the fleet file's [trust] policy requires signatures; sign it with `upshift adapter sign`"
    )]
    Unsigned {
        /// The adapter.
        path: PathBuf,
        /// The expected signature file.
        sig: PathBuf,
    },
    /// The signatures are for other bytes.
    #[error(
        "adapter {path} has sha256 {actual}, but its signatures are for {signed}: the file changed after it was signed"
    )]
    Digest {
        /// The adapter.
        path: PathBuf,
        /// Its digest now.
        actual: String,
        /// The digest signed.
        signed: String,
    },
    /// Too few trusted signatures.
    #[error(
        "adapter {path} has {valid} valid signature(s) from trusted keys ({signers}); the [trust] policy requires {needed}"
    )]
    TooFew {
        /// The adapter.
        path: PathBuf,
        /// Valid trusted signatures.
        valid: usize,
        /// Who they are from.
        signers: String,
        /// What the policy needs.
        needed: String,
    },
    /// A key or file that cannot be read or parsed.
    #[error("{0}")]
    Invalid(String),
}

/// Where an adapter's signatures live.
pub fn signature_path(adapter: &Path) -> PathBuf {
    let mut name = adapter.as_os_str().to_owned();
    name.push(".sig.json");
    PathBuf::from(name)
}

fn decode<const N: usize>(what: &str, text: &str) -> Result<[u8; N], TrustError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| TrustError::Invalid(format!("{what} is not hex: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| TrustError::Invalid(format!("{what} is not {N} bytes")))
}

/// A public key from hex.
pub fn public_key(text: &str) -> Result<VerifyingKey, TrustError> {
    VerifyingKey::from_bytes(&decode::<32>("the public key", text)?)
        .map_err(|e| TrustError::Invalid(format!("the public key is not an Ed25519 key: {e}")))
}

/// A new key pair: (secret, public), both hex.
pub fn keygen() -> Result<(String, String), TrustError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| TrustError::Invalid(format!("no randomness for a key: {e}")))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        hex::encode(key.to_bytes()),
        hex::encode(key.verifying_key().to_bytes()),
    ))
}

fn read_signatures(path: &Path) -> Result<Option<SignatureFile>, TrustError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrustError::Invalid(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrustError::Invalid(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Sign `adapter` (its bytes are `wasm`) with the hex secret key; the signature is added to
/// `<file>.sig.json` (replacing an earlier one by the same key, dropping any for other bytes).
pub fn sign(
    adapter: &Path,
    wasm: &[u8],
    secret_hex: &str,
    signer: &str,
) -> Result<SignatureFile, TrustError> {
    let key = SigningKey::from_bytes(&decode::<32>("the secret key", secret_hex)?);
    let digest = crate::runtime::digest(wasm);
    let sig_path = signature_path(adapter);
    let mut file = read_signatures(&sig_path)?
        .filter(|f| f.digest == digest)
        .unwrap_or_else(|| SignatureFile {
            digest: digest.clone(),
            signatures: Vec::new(),
        });
    let public = hex::encode(key.verifying_key().to_bytes());
    file.signatures.retain(|s| s.key != public);
    file.signatures.push(AdapterSignature {
        signer: signer.to_string(),
        key: public,
        signature: hex::encode(key.sign(&message(&digest)).to_bytes()),
    });
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| TrustError::Invalid(format!("cannot encode signatures: {e}")))?;
    std::fs::write(&sig_path, text)
        .map_err(|e| TrustError::Invalid(format!("cannot write {}: {e}", sig_path.display())))?;
    Ok(file)
}

/// Whether `signature_hex` is `key`'s signature over the adapter digest `digest`.
fn signed_by(key: &VerifyingKey, signature_hex: &str, digest: &str) -> bool {
    decode::<64>("a signature", signature_hex).is_ok_and(|b| {
        key.verify(&message(digest), &Signature::from_bytes(&b))
            .is_ok()
    })
}

/// Check `adapter` (bytes `wasm`) against `policy`; returns the names of the trusted keys that
/// signed it.
pub fn verify(
    adapter: &Path,
    wasm: &[u8],
    policy: &TrustPolicy,
) -> Result<Vec<String>, TrustError> {
    let sig_path = signature_path(adapter);
    let Some(file) = read_signatures(&sig_path)? else {
        return Err(TrustError::Unsigned {
            path: adapter.to_path_buf(),
            sig: sig_path,
        });
    };
    let actual = crate::runtime::digest(wasm);
    if file.digest != actual {
        return Err(TrustError::Digest {
            path: adapter.to_path_buf(),
            actual,
            signed: file.digest,
        });
    }
    let mut valid = Vec::new();
    for (name, key_hex) in &policy.keys {
        let Ok(key) = public_key(key_hex) else {
            continue;
        };
        let signed = file.signatures.iter().any(|s| {
            s.key.eq_ignore_ascii_case(key_hex.trim()) && signed_by(&key, &s.signature, &actual)
        });
        if signed {
            valid.push(name.clone());
        }
    }
    let (enough, needed) = match policy.require {
        Require::All => (
            valid.len() == policy.keys.len(),
            format!("all {} listed key(s)", policy.keys.len()),
        ),
        Require::AtLeast(n) => (valid.len() >= n.max(1), format!("at least {}", n.max(1))),
    };
    if !enough {
        return Err(TrustError::TooFew {
            path: adapter.to_path_buf(),
            valid: valid.len(),
            signers: if valid.is_empty() {
                "none".into()
            } else {
                valid.join(", ")
            },
            needed,
        });
    }
    Ok(valid)
}

/// One signature found beside an adapter, checked against its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureCheck {
    /// Who says they signed.
    pub signer: String,
    /// Their public key, hex.
    pub key: String,
    /// Whether the signature is valid for these exact bytes.
    pub valid: bool,
}

/// The signatures in `<file>.sig.json`, each checked against `wasm` (empty when unsigned).
pub fn signatures_of(adapter: &Path, wasm: &[u8]) -> Result<Vec<SignatureCheck>, TrustError> {
    let Some(file) = read_signatures(&signature_path(adapter))? else {
        return Ok(Vec::new());
    };
    let actual = crate::runtime::digest(wasm);
    Ok(file
        .signatures
        .iter()
        .map(|s| {
            let valid = file.digest == actual
                && public_key(&s.key).is_ok_and(|key| signed_by(&key, &s.signature, &actual));
            SignatureCheck {
                signer: s.signer.clone(),
                key: s.key.clone(),
                valid,
            }
        })
        .collect())
}
