//! JWT verification: who the user is and which accounts it may see; and [`mint_token`], the
//! one place tokens with these claims are made (`instantchat token`, the load generator, tests).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instantchat_event::is_valid_account_id;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{EncodingKey, Header, Validation, decode, encode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{AccountAccess, GatewaySettings};

/// Which accounts a user may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountScope {
    /// Every account (`accounts: ["*"]`, or `ACCOUNT_ACCESS=all`).
    All,
    /// These accounts only.
    Only(BTreeSet<String>),
}

impl AccountScope {
    pub fn allows(&self, account: &str) -> bool {
        match self {
            AccountScope::All => true,
            AccountScope::Only(set) => set.contains(account),
        }
    }
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub scope: AccountScope,
    /// Unix seconds when the token expires.
    pub expires_at: u64,
}

/// Why a token was refused. The `Display` text is what the client sees as `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Token expired")]
    Expired,
    #[error("Invalid token")]
    Invalid,
    #[error("Token has no user (userId or sub claim)")]
    NoUser,
    #[error("User ID mismatch")]
    UserMismatch,
    #[error("Token has no accounts claim")]
    NoAccounts,
    #[error("Too many connections for this user")]
    TooManyConnections,
    #[error("Authentication timeout")]
    Timeout,
    #[error("Token not valid yet (nbf)")]
    NotYetValid,
    #[error(
        "Token has an invalid accounts claim: each entry must be an account id (1 to 128 of \
         A-Z a-z 0-9 _ -) or \"*\""
    )]
    InvalidAccounts,
    #[error("Token too large (at most 8192 bytes)")]
    TooLarge,
}

impl AuthError {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Expired => "expired",
            AuthError::Invalid => "invalid",
            AuthError::NoUser => "no_user",
            AuthError::UserMismatch => "user_mismatch",
            AuthError::NoAccounts => "no_accounts",
            AuthError::TooManyConnections => "too_many_connections",
            AuthError::Timeout => "timeout",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::InvalidAccounts => "invalid_accounts",
            AuthError::TooLarge => "too_large",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(rename = "userId")]
    user_id: Option<Value>,
    sub: Option<Value>,
    accounts: Option<Vec<Value>>,
    exp: u64,
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The largest token accepted. A token names its user and accounts (a few thousand of them fit);
/// one larger is refused before its signature is checked.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Verifies `token` (size, signature, algorithm, `exp`, `nbf`, the accounts it names) and, when
/// the client names a user, that it is the token's user.
pub fn verify(
    settings: &GatewaySettings,
    token: &str,
    claimed_user: Option<&str>,
) -> Result<Identity, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut validation = Validation::new(settings.jwt_algorithm);
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    match &settings.jwt_audience {
        Some(audiences) => {
            validation.set_audience(audiences);
            validation.set_required_spec_claims(&["exp", "aud"]);
        }
        // Identity providers put their own `aud` in every token (Supabase `authenticated`,
        // Firebase the project id); without a configured audience there is nothing to hold it to.
        None => validation.validate_aud = false,
    }
    let mut decoded = decode::<Claims>(token, &settings.jwt_key, &validation);
    // During a secret rotation, a token signed with the previous secret still counts.
    if let (Err(e), Some(previous)) = (&decoded, &settings.jwt_previous_key)
        && matches!(e.kind(), ErrorKind::InvalidSignature)
    {
        decoded = decode::<Claims>(token, previous, &validation);
    }
    let data = decoded.map_err(|e| match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        _ => AuthError::Invalid,
    })?;
    let claims = data.claims;
    let user_id = claims
        .user_id
        .as_ref()
        .and_then(id_string)
        .or_else(|| claims.sub.as_ref().and_then(id_string))
        .ok_or(AuthError::NoUser)?;
    if claimed_user.is_some_and(|u| u != user_id) {
        return Err(AuthError::UserMismatch);
    }
    let scope = match settings.account_access {
        AccountAccess::All => AccountScope::All,
        AccountAccess::Claim => {
            let accounts = claims.accounts.ok_or(AuthError::NoAccounts)?;
            // Every entry an account id (as `subscribe` takes them) or `*`: a token that names
            // something else is refused whole rather than read in part.
            let ids = accounts
                .iter()
                .map(|v| id_string(v).filter(|id| id == "*" || is_valid_account_id(id)))
                .collect::<Option<BTreeSet<String>>>()
                .ok_or(AuthError::InvalidAccounts)?;
            if ids.contains("*") {
                AccountScope::All
            } else {
                AccountScope::Only(ids)
            }
        }
    };
    Ok(Identity {
        user_id,
        scope,
        expires_at: claims.exp,
    })
}

/// Why [`mint_token`] made no token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the system clock is set before 1970")]
    Clock,
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// An HS256 token for `user` (`userId` and `sub`) that may see `accounts` (`["*"]`: every
/// account), expiring `ttl` from now: the claims [`verify`] reads.
pub fn mint_token(
    secret: &str,
    user: &str,
    accounts: &[impl AsRef<str>],
    ttl: Duration,
) -> Result<String, MintError> {
    mint_token_for(secret, user, accounts, ttl, None)
}

/// [`mint_token`] with an `aud` claim, for gateways that check one (`JWT_AUDIENCE`).
pub fn mint_token_for(
    secret: &str,
    user: &str,
    accounts: &[impl AsRef<str>],
    ttl: Duration,
    audience: Option<&str>,
) -> Result<String, MintError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Clock)?;
    let accounts: Vec<&str> = accounts.iter().map(AsRef::as_ref).collect();
    let mut claims = serde_json::json!({
        "userId": user,
        "sub": user,
        "accounts": accounts,
        "exp": now.as_secs() + ttl.as_secs(),
    });
    if let Some(audience) = audience {
        claims["aud"] = audience.into();
    }
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    const CURRENT: &str = "the-current-secret-0123456789";
    const PREVIOUS: &str = "the-previous-secret-0123456789";

    fn settings(extra: &[&str]) -> GatewaySettings {
        let mut argv = vec!["instantchat-gateway", "--jwt-secret", CURRENT];
        argv.extend_from_slice(extra);
        crate::GatewayArgs::try_parse_from(argv)
            .expect("flags")
            .gateway
            .settings()
            .expect("settings")
    }

    fn token(secret: &str, exp_in: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let claims = json!({ "userId": "u1", "accounts": ["a"], "exp": now + exp_in });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token")
    }

    #[test]
    fn the_previous_secret_is_accepted_only_while_configured() {
        let rotating = settings(&["--jwt-secret-previous", PREVIOUS]);
        let plain = settings(&[]);
        assert_eq!(
            verify(&rotating, &token(CURRENT, 60), Some("u1")).map(|i| i.user_id),
            Ok("u1".to_owned())
        );
        assert_eq!(
            verify(&rotating, &token(PREVIOUS, 60), Some("u1")).map(|i| i.user_id),
            Ok("u1".to_owned())
        );
        assert_eq!(
            verify(&plain, &token(PREVIOUS, 60), None),
            Err(AuthError::Invalid),
            "once the rotation is over, the old secret is refused"
        );
        assert_eq!(
            verify(&rotating, &token("some-other-secret-0123456789", 60), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verify(&rotating, &token(PREVIOUS, -10), None),
            Err(AuthError::Expired),
            "an old-secret token still expires"
        );
    }

    #[test]
    fn an_audience_is_checked_only_when_configured() {
        let exp = in_a_minute();
        let with_aud = |aud: serde_json::Value| {
            signed(json!({ "userId": "u1", "accounts": ["a"], "exp": exp, "aud": aud }))
        };
        let any = settings(&[]);
        let ours = settings(&["--jwt-audience", "instantchat, authenticated"]);
        let ok = |s: &GatewaySettings, t: &str| verify(s, t, None).map(|i| i.user_id);
        assert_eq!(ok(&any, &with_aud(json!("authenticated"))), Ok("u1".into()));
        assert_eq!(ok(&any, &with_aud(json!(["x", "y"]))), Ok("u1".into()));
        assert_eq!(ok(&any, &token(CURRENT, 60)), Ok("u1".into()));
        assert_eq!(
            ok(&ours, &with_aud(json!("authenticated"))),
            Ok("u1".into())
        );
        assert_eq!(
            ok(&ours, &with_aud(json!(["other", "instantchat"]))),
            Ok("u1".into())
        );
        assert_eq!(
            ok(&ours, &with_aud(json!("other"))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            ok(&ours, &token(CURRENT, 60)),
            Err(AuthError::Invalid),
            "no aud at all"
        );
        let minted = mint_token_for(
            CURRENT,
            "u1",
            &["a"],
            Duration::from_secs(60),
            Some("instantchat"),
        )
        .expect("minted");
        assert_eq!(ok(&ours, &minted), Ok("u1".into()));
    }

    /// `claims` signed HS256 with [`CURRENT`].
    fn signed(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(CURRENT.as_bytes()),
        )
        .expect("token")
    }

    fn in_a_minute() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 60
    }

    fn testdata(name: &str) -> String {
        format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_the_configured_public_key() {
        let claims = json!({ "userId": "u1", "accounts": ["a"], "exp": in_a_minute() });
        for (algorithm, name) in [
            (jsonwebtoken::Algorithm::RS256, "rs256"),
            (jsonwebtoken::Algorithm::ES256, "es256"),
        ] {
            let public = testdata(&format!("{name}-public.pem"));
            let settings = crate::GatewayArgs::try_parse_from([
                "instantchat-gateway",
                "--jwt-public-key",
                &public,
            ])
            .expect("flags")
            .gateway
            .settings()
            .expect("settings");
            assert_eq!(settings.jwt_algorithm, algorithm);
            let private =
                std::fs::read(testdata(&format!("{name}-private.pem"))).expect("key file");
            let key = match algorithm {
                jsonwebtoken::Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
                _ => EncodingKey::from_ec_pem(&private),
            }
            .expect("private key");
            let signed = encode(&Header::new(algorithm), &claims, &key).expect("token");
            assert_eq!(
                verify(&settings, &signed, Some("u1")).map(|i| i.user_id),
                Ok("u1".to_owned()),
                "{name}"
            );
            // HS256 with the public key as its secret: the algorithm confusion attack.
            let public_bytes = std::fs::read(&public).expect("key file");
            let forged = encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(&public_bytes),
            )
            .expect("token");
            assert_eq!(
                verify(&settings, &forged, None),
                Err(AuthError::Invalid),
                "{name}"
            );
        }
    }

    #[test]
    fn the_user_falls_back_to_sub_and_the_scope_follows_account_access() {
        let claim = settings(&[]);
        let all = settings(&["--account-access", "all"]);
        let exp = in_a_minute();
        let sub_only = verify(
            &claim,
            &signed(json!({ "sub": 42, "accounts": ["a", 17], "exp": exp })),
            Some("42"),
        )
        .expect("valid");
        assert_eq!(sub_only.user_id, "42");
        assert_eq!(
            sub_only.scope,
            AccountScope::Only(["a".to_owned(), "17".to_owned()].into())
        );
        let star = signed(json!({ "userId": "u", "accounts": ["*"], "exp": exp }));
        assert_eq!(
            verify(&claim, &star, None).map(|i| i.scope),
            Ok(AccountScope::All)
        );
        let no_accounts = signed(json!({ "userId": "u", "exp": exp }));
        assert_eq!(
            verify(&claim, &no_accounts, None),
            Err(AuthError::NoAccounts)
        );
        assert_eq!(
            verify(&all, &no_accounts, None).map(|i| i.scope),
            Ok(AccountScope::All),
            "ACCOUNT_ACCESS=all: every user sees every account"
        );
        let nobody = signed(json!({ "accounts": ["a"], "exp": exp }));
        assert_eq!(verify(&all, &nobody, None), Err(AuthError::NoUser));
    }

    #[test]
    fn minted_tokens_verify_with_their_user_accounts_and_expiry() {
        let minted =
            mint_token(CURRENT, "u7", &["a", "b"], Duration::from_secs(600)).expect("minted");
        let identity = verify(&settings(&[]), &minted, Some("u7")).expect("accepted");
        assert_eq!(identity.user_id, "u7");
        assert_eq!(
            identity.scope,
            AccountScope::Only(["a".to_owned(), "b".to_owned()].into())
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!((now + 590..=now + 600).contains(&identity.expires_at));

        let every = mint_token(CURRENT, "u7", &["*"], Duration::from_secs(60)).expect("minted");
        assert_eq!(
            verify(&settings(&[]), &every, None).map(|i| i.scope),
            Ok(AccountScope::All)
        );
        let other = mint_token(
            "some-other-secret-0123456789",
            "u7",
            &["a"],
            Duration::from_secs(60),
        )
        .expect("minted");
        assert_eq!(
            verify(&settings(&[]), &other, None),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn nbf_accounts_and_size_are_checked() {
        let s = settings(&[]);
        let exp = in_a_minute();
        let tomorrow = exp + 24 * 3600;
        let early = signed(
            json!({ "userId": "u", "accounts": ["a"], "exp": tomorrow, "nbf": tomorrow - 60 }),
        );
        assert_eq!(verify(&s, &early, None), Err(AuthError::NotYetValid));
        let past_nbf =
            signed(json!({ "userId": "u", "accounts": ["a"], "exp": exp, "nbf": exp - 120 }));
        assert!(verify(&s, &past_nbf, None).is_ok());
        for bad in [
            json!(["bad account"]),
            json!([">"]),
            json!(["a", true]),
            json!([{}]),
            json!([""]),
        ] {
            let t = signed(json!({ "userId": "u", "accounts": bad, "exp": exp }));
            assert_eq!(
                verify(&s, &t, None),
                Err(AuthError::InvalidAccounts),
                "{bad}"
            );
        }
        let numbers =
            signed(json!({ "userId": "u", "accounts": [17841400000000000u64, "b-1"], "exp": exp }));
        assert_eq!(
            verify(&s, &numbers, None).map(|i| i.scope),
            Ok(AccountScope::Only(
                ["17841400000000000".to_owned(), "b-1".to_owned()].into()
            ))
        );
        let huge = signed(
            json!({ "userId": "u", "accounts": ["a"], "exp": exp, "pad": "x".repeat(MAX_TOKEN_BYTES) }),
        );
        assert_eq!(verify(&s, &huge, None), Err(AuthError::TooLarge));
    }

    #[test]
    fn a_short_previous_secret_is_refused() {
        let args = crate::GatewayArgs::try_parse_from([
            "instantchat-gateway",
            "--jwt-secret",
            CURRENT,
            "--jwt-secret-previous",
            "short",
        ])
        .expect("flags");
        let err = args.gateway.settings().expect_err("refused");
        assert!(
            err.problems
                .iter()
                .any(|p| p.starts_with("JWT_SECRET_PREVIOUS")),
            "{err:?}"
        );
    }
}
