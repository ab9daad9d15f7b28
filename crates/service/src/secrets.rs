//! Secret settings: refuses values anyone could know or guess, before a service starts with them.
//!
//! Every service checks each of its secret settings with [`check_secret`] while it parses its
//! configuration (ingest: `INSTAGRAM_APP_SECRET`, each item, and `INSTAGRAM_WEBHOOK_VERIFY_TOKEN`;
//! the gateway: `JWT_SECRET`, `JWT_SECRET_PREVIOUS`, `ADMIN_TOKEN`), and reports the problems
//! with its other ones. A value is refused when it is
//!
//! - **published**: one of the example values in this repository (`.env.example`, the Kubernetes
//!   secret examples, the README and docs/) or of the Node.js backend this one replaces, which
//!   anyone can read: a gateway started with the example `JWT_SECRET` accepts tokens minted by
//!   anyone, an ingest with the example app secret accepts forged webhooks;
//! - **a placeholder**: it contains a marker such as `change-me`, `replace-me`, `placeholder` or
//!   `your_`;
//! - **too short**: fewer than [`MIN_LEN`] characters;
//! - **too few distinct characters**: fewer than a quarter of its length, capped at 6
//!   (`aaaaaaaabbbbbbbbc`);
//! - **a repetition**: a shorter piece repeated (`abcdefgh` twice).
//!
//! Real secrets pass: Meta's app secrets are 32 hex digits, and `openssl rand -hex 32` (the
//! documented `JWT_SECRET`) or `instantchat secret` give 64. A random hex string of 16 or more
//! digits fails the distinct-character rule with a chance below 4 in a billion (the worst case,
//! 24 digits, computed exactly), and the repetition rule with less.
//!
//! The messages never contain the value (they are logged), name the setting, say what is wrong
//! and how to get a good value: [`generate`] makes one (what `instantchat secret` prints).

/// Fewer characters than this are refused: 16 bytes, 128 bits when random. The gateway's HS256
/// key and admin token had the same floor before this module.
pub const MIN_LEN: usize = 16;

/// The example values published with InstantChat: in `.env.example`,
/// `deploy/k8s/base/secret.example.yaml`, `deploy/k8s/overlays/dev/secrets.env.example`, the
/// README and docs/ (the placeholders of its commands: `...`, `old,new`, `<new>`, `<old>`), and
/// the environment examples of the Node.js backend this one replaces, which an operator may
/// carry over. Most are refused by the other rules too; listed so that the message says where
/// the value comes from, and so that an example long enough to pass them is still refused.
/// Compared exactly.
pub const PUBLISHED_EXAMPLES: &[&str] = &[
    "change-me",
    "change-me-to-a-long-random-string",
    "the-secret-being-rotated-out",
    "...",
    "old",
    "new",
    "<old>",
    "<new>",
    "old,new",
    "your_jwt_secret_here",
    "your_verify_token",
    "your_app_secret",
];

/// Substrings of a placeholder, compared case-insensitively: no generated secret has them.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "change-me",
    "change_me",
    "changeme",
    "replace-me",
    "replace_me",
    "replaceme",
    "placeholder",
    "your_",
    "your-",
];

/// `Ok` when `value` may be used as the secret setting `setting` (its name, e.g. `JWT_SECRET`,
/// with an item position when the setting is a list: `INSTAGRAM_APP_SECRET (item 2 of 3)`);
/// otherwise the message for the operator: what is wrong and how to get a good value. The value
/// itself never appears in it.
///
/// ```
/// use instantchat_service::secrets::check_secret;
/// assert!(check_secret("JWT_SECRET", "change-me-to-a-long-random-string").is_err());
/// let err = check_secret("JWT_SECRET", "short").unwrap_err();
/// assert!(err.starts_with("JWT_SECRET is too short (5 characters"), "{err}");
/// assert!(check_secret("JWT_SECRET", &instantchat_service::secrets::generate(32).unwrap()).is_ok());
/// ```
pub fn check_secret(setting: &str, value: &str) -> Result<(), String> {
    match weakness(value) {
        None => Ok(()),
        Some(weakness) => Err(format!("{setting} {weakness}: {}", advice(setting))),
    }
}

/// What is wrong with `value` as a secret, if anything: the middle of the operator's message.
fn weakness(value: &str) -> Option<String> {
    if PUBLISHED_EXAMPLES.contains(&value) {
        return Some(
            "is an example value published with InstantChat (in .env.example, the deploy \
             examples or the docs), so anyone who read them knows it"
                .to_owned(),
        );
    }
    let lower = value.to_ascii_lowercase();
    if let Some(marker) = PLACEHOLDER_MARKERS.iter().find(|m| lower.contains(*m)) {
        return Some(format!(
            "still holds a placeholder (it contains \"{marker}\"), not a real secret"
        ));
    }
    let len = value.chars().count();
    if len < MIN_LEN {
        return Some(format!(
            "is too short ({len} characters; a secret needs {MIN_LEN} or more)"
        ));
    }
    let mut chars: Vec<char> = value.chars().collect();
    if let Some(unit) = (1..=len / 2).find(|&n| len.is_multiple_of(n) && repeats(&chars, n)) {
        return Some(format!(
            "is one {unit}-character piece repeated, which is easy to guess"
        ));
    }
    chars.sort_unstable();
    chars.dedup();
    let needed = (len / 4).min(6);
    if chars.len() < needed {
        return Some(format!(
            "has too few distinct characters ({} in {len}; a secret this long needs {needed} or \
             more), which is easy to guess",
            chars.len()
        ));
    }
    None
}

/// Whether `chars` is its first `n` characters repeated.
fn repeats(chars: &[char], n: usize) -> bool {
    chars.chunks(n).all(|chunk| chunk == &chars[..n])
}

/// How to get a good value for `setting`.
fn advice(setting: &str) -> &'static str {
    if setting.starts_with("INSTAGRAM_APP_SECRET") {
        "set it to the app secret from the Meta App Dashboard (App settings > Basic > App secret; \
         32 hex digits), which signs the webhooks"
    } else {
        "set it to a long random value: `instantchat secret` prints one (as does `openssl rand \
         -hex 32`)"
    }
}

/// A new secret: `bytes` random bytes from the OS as hex (twice as many digits), which passes
/// [`check_secret`]. What `instantchat secret` prints and `instantchat dev` generates.
pub fn generate(bytes: usize) -> std::io::Result<String> {
    let bytes = bytes.max(MIN_LEN / 2);
    loop {
        let secret = random_hex(bytes)?;
        // A random value fails the rules with a chance below 4 in a billion: then draw again.
        if weakness(&secret).is_none() {
            return Ok(secret);
        }
    }
}

/// `n` random bytes from the operating system's generator, as hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(value: &str) -> String {
        check_secret("JWT_SECRET", value).expect_err(value)
    }

    #[test]
    fn every_published_example_is_refused_as_published() {
        for example in PUBLISHED_EXAMPLES {
            let err = refused(example);
            assert!(err.contains("example value published"), "{example}: {err}");
        }
    }

    #[test]
    fn placeholders_are_refused() {
        for value in [
            "change-me-please-0123456789",
            "CHANGEME_ab12cd34ef56",
            "replace_me_with_9f8e7d6c5b4a",
            "placeholder-1234567890abcdef",
            "your_jwt_secret_for_production",
        ] {
            assert!(refused(value).contains("placeholder"), "{value}");
        }
    }

    #[test]
    fn short_values_are_refused_with_their_length() {
        assert_eq!(
            refused("0123456789abcde"),
            "JWT_SECRET is too short (15 characters; a secret needs 16 or more): set it to a \
             long random value: `instantchat secret` prints one (as does `openssl rand -hex 32`)"
        );
        assert!(refused("").contains("too short (0 characters"));
    }

    #[test]
    fn repetitions_and_few_distinct_characters_are_refused() {
        assert!(refused("aaaaaaaaaaaaaaaa").contains("1-character piece repeated"));
        assert!(refused("abcdefghabcdefgh").contains("8-character piece repeated"));
        let err = refused("aaaaaaaabbbbbbbbc");
        assert!(
            err.contains("too few distinct characters (3 in 17"),
            "{err}"
        );
    }

    #[test]
    fn the_message_never_contains_the_value() {
        for value in [
            "s3cr3t-v4lue",
            "zzzzzzzzzzzzzzzzzzzz",
            "my-changeme-token-xyz",
        ] {
            assert!(!refused(value).contains(value), "{value}");
        }
    }

    #[test]
    fn app_secrets_are_sent_to_the_meta_app_dashboard() {
        let err = check_secret("INSTAGRAM_APP_SECRET (item 2 of 2)", "change-me").unwrap_err();
        assert!(
            err.starts_with("INSTAGRAM_APP_SECRET (item 2 of 2) is an example value"),
            "{err}"
        );
        assert!(err.contains("Meta App Dashboard"), "{err}");
        assert!(!err.contains("instantchat secret"), "{err}");
    }

    #[test]
    fn real_secrets_pass() {
        for value in [
            // The shape of a Meta app secret, and of `openssl rand -hex 32`.
            "4f1c9a2be07d3856a1c4e9f02b7d6a35",
            "9b2e61f0c8d74a3e5f1b0c6d2e8a7f43b5d9c1e0a6f2b8d4c7e3a9f1b5d0c2e8",
            // openssl rand -base64 24
            "q3V0yN8kR2mX7pL9sT4wZ1bC6dF5gH0j",
            // A long passphrase.
            "correct-horse-battery-staple-1729",
        ] {
            assert_eq!(check_secret("JWT_SECRET", value), Ok(()), "{value}");
        }
    }

    #[test]
    fn random_hex_of_sixteen_digits_or_more_passes() {
        // The distinct-character rule is the one a random value could fail, with a chance below 4
        // in a billion for 16+ hex digits: thousands of draws all pass.
        for bytes in [8, 12, 16, 32] {
            for _ in 0..2000 {
                let value = random_hex(bytes).unwrap();
                assert_eq!(check_secret("S", &value), Ok(()), "{value}");
            }
        }
    }

    #[test]
    fn generated_secrets_pass_and_differ() {
        let a = generate(32).unwrap();
        let b = generate(32).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(check_secret("JWT_SECRET", &a), Ok(()));
        assert_eq!(
            generate(1).unwrap().len(),
            MIN_LEN,
            "never fewer than 16 digits"
        );
    }
}
