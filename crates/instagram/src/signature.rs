//! `X-Hub-Signature-256` verification: Meta signs every webhook with HMAC-SHA256 of the exact
//! body bytes under the app secret. Only the raw bytes are ever hashed; re-serialized JSON differs
//! (Meta escapes `/` and non-ASCII) and would not verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header value's prefix naming the algorithm.
const PREFIX: &str = "sha256=";
/// Hex digits in an HMAC-SHA256.
const HEX_LEN: usize = 64;

/// Why a webhook's signature was refused. The service answers `401` to all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request has no `X-Hub-Signature-256` header: it did not come from Meta, or a proxy
    /// dropped the header.
    #[error(
        "missing X-Hub-Signature-256 header: Meta signs every webhook, so this request did not come from Meta or a proxy dropped the header"
    )]
    Missing,
    /// The header is there but is not `sha256=<64 hex digits>`.
    #[error("malformed X-Hub-Signature-256 header: {0}")]
    Malformed(Malformed),
    /// The header is well-formed but no configured secret produces it for this body.
    #[error(
        "X-Hub-Signature-256 does not match the body under any of the {secrets} configured app secret(s): check INSTAGRAM_APP_SECRET holds the secret of the app that subscribed the webhook, and that nothing altered the body on the way"
    )]
    Mismatch {
        /// How many secrets were tried.
        secrets: usize,
    },
    /// No secret to verify with: a configuration error, not the sender's.
    #[error(
        "no app secret configured: set INSTAGRAM_APP_SECRET (comma-separated for several apps)"
    )]
    NoSecret,
}

/// What is wrong with a malformed header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// No `sha256=` prefix: often the legacy SHA-1 `X-Hub-Signature` value (`sha1=...`).
    #[error(
        "expected `sha256=<64 hex digits>`, found a value not starting with `sha256=` (the legacy SHA-1 `sha1=` signature is not accepted)"
    )]
    NoSha256Prefix,
    /// The digest after `sha256=` has the wrong length.
    #[error("expected 64 hex digits after `sha256=`, found {0} characters")]
    WrongLength(usize),
    /// The digest after `sha256=` has a character that is not a hex digit.
    #[error("the digest after `sha256=` contains a character that is not a hex digit")]
    NotHex,
}

impl From<Malformed> for SignatureError {
    fn from(m: Malformed) -> Self {
        SignatureError::Malformed(m)
    }
}

/// Checks `header` (the `X-Hub-Signature-256` value, `None` when absent) against `body` under
/// each secret in turn: an Instagram-Login app signs with the Instagram app secret, a
/// Facebook-Login app with the Meta app secret, and both may be configured. Comparisons are
/// constant-time; upper- and lowercase hex are accepted.
pub fn verify_signature<S: AsRef<[u8]>>(
    secrets: &[S],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    Signature::parse(header)?.verify(secrets, body)
}

/// A well-formed `X-Hub-Signature-256` value: the digest it claims, not yet checked.
///
/// Parsing needs only the header, so a service can refuse a request without one (or with a
/// malformed one) before it reads the body; [`Signature::verify`] then checks the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 32]);

impl Signature {
    /// Reads the header value (`None` when absent): [`SignatureError::Missing`] or
    /// [`SignatureError::Malformed`] when it cannot be a signature.
    pub fn parse(header: Option<&str>) -> Result<Self, SignatureError> {
        Ok(Signature(parse_header(
            header.ok_or(SignatureError::Missing)?,
        )?))
    }

    /// Whether one of `secrets` signs `body` with this digest (constant-time comparisons).
    pub fn verify<S: AsRef<[u8]>>(&self, secrets: &[S], body: &[u8]) -> Result<(), SignatureError> {
        if secrets.is_empty() {
            return Err(SignatureError::NoSecret);
        }
        let matched = secrets.iter().any(|secret| {
            // HMAC accepts keys of any length, so `new_from_slice` does not fail.
            HmacSha256::new_from_slice(secret.as_ref())
                .map(|mac| mac.chain_update(body).verify_slice(&self.0).is_ok())
                .unwrap_or(false)
        });
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch {
                secrets: secrets.len(),
            })
        }
    }
}

/// The `X-Hub-Signature-256` value Meta would send for `body` under `secret`: `sha256=<hex>`.
/// For tools and tests that play Meta.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let digest = HmacSha256::new_from_slice(secret)
        .map(|mac| mac.chain_update(body).finalize().into_bytes())
        .unwrap_or_default();
    let mut header = String::with_capacity(PREFIX.len() + HEX_LEN);
    header.push_str(PREFIX);
    header.push_str(&hex::encode(digest));
    header
}

/// The 32 digest bytes of a `sha256=<hex>` header value.
fn parse_header(header: &str) -> Result<[u8; 32], Malformed> {
    let header = header.trim();
    let digest = header
        .get(..PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        .and_then(|_| header.get(PREFIX.len()..))
        .ok_or(Malformed::NoSha256Prefix)?;
    if digest.len() != HEX_LEN {
        return Err(Malformed::WrongLength(digest.chars().count()));
    }
    let mut bytes = [0; 32];
    hex::decode_to_slice(digest, &mut bytes).map_err(|_| Malformed::NotHex)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let header = sign(b"k", b"{}");
        assert!(header.starts_with("sha256=") && header.len() == 71);
        assert_eq!(verify_signature(&["k"], Some(&header), b"{}"), Ok(()));
    }

    #[test]
    fn multibyte_digest_is_malformed_not_a_panic() {
        let header = format!("sha256={}", "é".repeat(10));
        assert_eq!(
            verify_signature(&["k"], Some(&header), b"{}"),
            Err(SignatureError::Malformed(Malformed::WrongLength(10)))
        );
        let header = format!("sha256={}é", "a".repeat(62));
        assert_eq!(
            verify_signature(&["k"], Some(&header), b"{}"),
            Err(SignatureError::Malformed(Malformed::NotHex))
        );
    }
}
