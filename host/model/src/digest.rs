//! Content digests.

use sha2::{Digest, Sha256};

/// sha256 of `bytes`, as lowercase hex: how adapters, backups and approvals are named.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
