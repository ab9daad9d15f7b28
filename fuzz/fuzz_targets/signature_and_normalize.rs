//! Arbitrary bytes as a signed webhook body: the right signature verifies, a mutated signature
//! or body does not, the bytes as a header never panic, and normalizing never panics and only
//! yields events that keep the contract (valid subject tokens, prefixed ids, JSON details).

#![no_main]

use instantchat_event::{is_valid_account_id, is_valid_event_type};
use instantchat_instagram::{normalize, sign, verify_signature};
use libfuzzer_sys::fuzz_target;

const SECRETS: [&[u8]; 2] = [b"another_app_secret", b"test_app_secret"];

fuzz_target!(|body: &[u8]| {
    let header = sign(SECRETS[1], body);
    assert!(verify_signature(&SECRETS, Some(&header), body).is_ok());

    // One hex digit changed: refused.
    let mut mutated = header.clone().into_bytes();
    let at = 7 + body.first().map_or(0, |b| usize::from(*b) % 64);
    mutated[at] = if mutated[at] == b'0' { b'1' } else { b'0' };
    let mutated = String::from_utf8(mutated).expect("hex stays ASCII");
    assert!(verify_signature(&SECRETS, Some(&mutated), body).is_err());

    // One bit of the body changed: refused.
    if let Some((&last, rest)) = body.split_last() {
        let mut altered = rest.to_vec();
        altered.push(last ^ 1);
        assert!(verify_signature(&SECRETS, Some(&header), &altered).is_err());
    }

    // The bytes as a header value: any verdict, no panic.
    let _ = verify_signature(&SECRETS, Some(&String::from_utf8_lossy(body)), body);

    let first = normalize(body, 1_700_000_000_000);
    assert_eq!(
        first,
        normalize(body, 1_700_000_000_000),
        "normalize is deterministic"
    );
    if let Ok(normalized) = first {
        for event in &normalized.events {
            assert!(is_valid_event_type(&event.event_type), "{event:?}");
            assert!(is_valid_account_id(&event.account_id), "{event:?}");
            let prefix = format!("{}:", event.event_type);
            assert!(
                event.id.len() > prefix.len() && event.id.starts_with(&prefix),
                "{event:?}"
            );
            assert!(details_are_a_json_object(&event.details_json), "{event:?}");
            assert_eq!(event.timestamp.len(), 24, "{event:?}");
        }
    }
});

/// `details_json` is a JSON object that serde_json reads, except that numbers beyond f64 (`1e400`,
/// valid JSON that serde_json refuses by default) are kept as Meta wrote them.
fn details_are_a_json_object(details: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(details) {
        Ok(value) => value.is_object(),
        Err(e) => {
            e.to_string().starts_with("number out of range")
                && details.starts_with('{')
                && serde_json::from_str::<&serde_json::value::RawValue>(details).is_ok()
        }
    }
}
