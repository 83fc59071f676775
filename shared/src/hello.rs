//! Data-plane authentication: the HMAC a node sends to prove it holds the cluster secret.
//!
//! The server picks a fresh random nonce per connection; the client answers with
//! `hex(HMAC-SHA256(secret, "colony-hello-v1" ‖ u32be(len nonce) ‖ nonce ‖ u32be(len id) ‖ id))`.
//! A captured answer is useless on another connection because the nonce differs.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::ClusterSecret;

/// Domain separation: these MACs can never be confused with init-token signatures.
pub const DOMAIN: &[u8] = b"colony-hello-v1";
/// Bytes of randomness in a nonce.
pub const NONCE_LEN: usize = 16;

fn mac(secret: &ClusterSecret, nonce: &str, instance_id: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.expose_bytes()).expect("HMAC takes any key length");
    mac.update(DOMAIN);
    for part in [nonce.as_bytes(), instance_id.as_bytes()] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        mac.update(&len.to_be_bytes());
        mac.update(part);
    }
    mac
}

/// A fresh hex nonce.
///
/// # Errors
/// The system random source failed.
pub fn new_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; NONCE_LEN];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The client's answer to `nonce`.
pub fn sign(secret: &ClusterSecret, nonce: &str, instance_id: &str) -> String {
    hex::encode(mac(secret, nonce, instance_id).finalize().into_bytes())
}

/// Checks an answer in constant time.
pub fn verify(secret: &ClusterSecret, nonce: &str, instance_id: &str, answer_hex: &str) -> bool {
    let Ok(answer) = hex::decode(answer_hex) else {
        return false;
    };
    mac(secret, nonce, instance_id)
        .verify_slice(&answer)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_nonce_and_id_verify() {
        let secret = ClusterSecret::from_bytes(b"0123456789abcdef0123".to_vec(), "test").unwrap();
        let other = ClusterSecret::from_bytes(b"fedcba9876543210fedc".to_vec(), "test").unwrap();
        let nonce = new_nonce().unwrap();
        let answer = sign(&secret, &nonce, "backend_1");
        assert!(verify(&secret, &nonce, "backend_1", &answer));
        assert!(!verify(&other, &nonce, "backend_1", &answer));
        assert!(!verify(
            &secret,
            &new_nonce().unwrap(),
            "backend_1",
            &answer
        ));
        assert!(!verify(&secret, &nonce, "backend_2", &answer));
        assert!(!verify(&secret, &nonce, "backend_1", "zz"));
        assert!(!verify(&secret, &nonce, "backend_1", ""));
    }
}
