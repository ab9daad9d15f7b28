//! `X-Hub-Signature-256` verification: every way a header can be refused, and the ways it passes.

use instantchat_instagram::{Malformed, SignatureError, sign, verify_signature};

const BODY: &[u8] = br#"{"object":"instagram","entry":[]}"#;

fn good() -> String {
    sign(b"test_app_secret", BODY)
}

#[test]
fn sign_matches_a_known_vector() {
    // The manifest's value for f05, computed by another implementation.
    let body = std::fs::read(format!(
        "{}/f05_mentions_comment_docs.json",
        crate::FIXTURES
    ))
    .unwrap();
    assert_eq!(
        sign(b"test_app_secret", &body),
        "sha256=e59db93792543e624fb9d6f9a3ea32d76cdf1ddb940f6c5a4bd58810caf7656f"
    );
}

#[test]
fn correct_signature_passes() {
    assert_eq!(
        verify_signature(&["test_app_secret"], Some(&good()), BODY),
        Ok(())
    );
}

#[test]
fn missing_header() {
    assert_eq!(
        verify_signature(&["test_app_secret"], None, BODY),
        Err(SignatureError::Missing)
    );
}

#[test]
fn sha1_only_is_malformed() {
    let legacy = "sha1=8a71a1af8e11ae2443aae2671d4c7796d94b6d35";
    let err = verify_signature(&["test_app_secret"], Some(legacy), BODY).unwrap_err();
    assert_eq!(err, SignatureError::Malformed(Malformed::NoSha256Prefix));
    assert!(err.to_string().contains("sha256="), "{err}");
    for no_prefix in ["", "sha256", &good()["sha256=".len()..]] {
        assert_eq!(
            verify_signature(&["test_app_secret"], Some(no_prefix), BODY),
            Err(SignatureError::Malformed(Malformed::NoSha256Prefix)),
            "{no_prefix:?}"
        );
    }
}

#[test]
fn non_hex_digest_is_malformed() {
    let header = format!("sha256={}", "zz".repeat(32));
    assert_eq!(
        verify_signature(&["test_app_secret"], Some(&header), BODY),
        Err(SignatureError::Malformed(Malformed::NotHex))
    );
}

#[test]
fn wrong_length_is_malformed() {
    let good = good();
    for (header, len) in [(&good[..good.len() - 2], 62), ("sha256=", 0)] {
        let err = verify_signature(&["test_app_secret"], Some(header), BODY).unwrap_err();
        assert_eq!(err, SignatureError::Malformed(Malformed::WrongLength(len)));
        assert!(
            err.to_string().contains(&format!("found {len} characters")),
            "{err}"
        );
    }
    let long = format!("{good}00");
    assert_eq!(
        verify_signature(&["test_app_secret"], Some(&long), BODY),
        Err(SignatureError::Malformed(Malformed::WrongLength(66)))
    );
}

#[test]
fn wrong_secret_is_a_mismatch() {
    let err = verify_signature(&["another_secret"], Some(&good()), BODY).unwrap_err();
    assert_eq!(err, SignatureError::Mismatch { secrets: 1 });
    assert!(err.to_string().contains("INSTAGRAM_APP_SECRET"), "{err}");
}

#[test]
fn altered_body_is_a_mismatch() {
    let mut body = BODY.to_vec();
    body.push(b' ');
    assert_eq!(
        verify_signature(&["test_app_secret"], Some(&good()), &body),
        Err(SignatureError::Mismatch { secrets: 1 })
    );
}

#[test]
fn second_of_two_secrets_matches() {
    let secrets = [
        b"instagram_app_secret".to_vec(),
        b"test_app_secret".to_vec(),
    ];
    assert_eq!(verify_signature(&secrets, Some(&good()), BODY), Ok(()));
    let neither = [b"a".to_vec(), b"b".to_vec()];
    assert_eq!(
        verify_signature(&neither, Some(&good()), BODY),
        Err(SignatureError::Mismatch { secrets: 2 })
    );
}

#[test]
fn uppercase_hex_and_prefix_are_accepted() {
    let upper = format!("sha256={}", good()["sha256=".len()..].to_ascii_uppercase());
    assert_eq!(
        verify_signature(&["test_app_secret"], Some(&upper), BODY),
        Ok(())
    );
    let shouting = good().to_ascii_uppercase();
    assert_eq!(
        verify_signature(&["test_app_secret"], Some(&shouting), BODY),
        Ok(())
    );
}

#[test]
fn no_secret_configured() {
    let none: [&str; 0] = [];
    let err = verify_signature(&none, Some(&good()), BODY).unwrap_err();
    assert_eq!(err, SignatureError::NoSecret);
    assert!(err.to_string().contains("INSTAGRAM_APP_SECRET"));
}
