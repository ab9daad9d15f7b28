//! The two secrets of a run in use: client tokens the way `instantchat token` mints them
//! (`crates/instantchat/src/tools.rs`) and `X-Hub-Signature-256` the way Meta signs (as
//! `instantchat_instagram::sign`). Kept here so the bench builds on its own, without the crates
//! it measures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use sha2::Sha256;

/// An HS256 JWT for `user` that may see `accounts`, valid for `ttl`.
pub fn mint_token(
    secret: &str,
    user: &str,
    accounts: &[String],
    ttl: Duration,
) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl.as_secs();
    let claims = json!({ "userId": user, "sub": user, "accounts": accounts, "exp": exp });
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let digest = Hmac::<Sha256>::new_from_slice(secret)
        .map(|mac| mac.chain_update(body).finalize().into_bytes())
        .unwrap_or_default();
    format!("sha256={}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_instagram_crate_does() {
        let body = br#"{"id":"1","eventType":"comments"}"#;
        assert_eq!(
            sign(b"s3cret", body),
            instantchat_instagram::sign(b"s3cret", body)
        );
    }

    #[test]
    fn tokens_are_three_part_jwts() {
        let t = mint_token(
            "0123456789abcdef0123",
            "u",
            &["a".into()],
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(t.split('.').count(), 3);
    }
}
