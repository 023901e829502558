//! Authentication (PROTOCOL.md §1): JWT HS256 when a secret is configured,
//! otherwise local mode, where every request is user `local`. In JWT mode,
//! static API keys may also name a user on the OpenAI-compatible routes
//! (server-to-server use).

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use base64::Engine;
use futures::future::LocalBoxFuture;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_protocol::ErrorCode;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The user id in local mode.
pub const LOCAL_USER: &str = "local";

/// Longest user id (`sub`) a token may carry.
pub const MAX_SUB_BYTES: usize = 256;

/// How JWT mode checks tokens.
#[derive(Default)]
pub struct JwtOptions {
    /// The HS256 secret.
    pub secret: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_seconds: u64,
    /// The `iss` a token must carry, if set.
    pub issuer: Option<String>,
    /// The `aud` a token must carry, if set.
    pub audience: Option<String>,
    /// Static API keys: (user, key).
    pub api_keys: Vec<(String, String)>,
}

/// How requests are authenticated.
pub enum Auth {
    /// No secret: everyone is [`LOCAL_USER`] (only allowed on loopback).
    Local,
    /// HS256 tokens signed with the secret, and API keys.
    Jwt {
        /// The verification key.
        key: DecodingKey,
        /// Algorithm, claims, `exp`, `nbf`, `iss` and `aud` checks (boxed:
        /// it is large, and `Auth` is built once).
        validation: Box<Validation>,
        /// Clock skew allowed on `iat`.
        leeway: u64,
        /// SHA-256 digests of the API keys, with their users.
        api_keys: Vec<([u8; 32], String)>,
    },
}

impl Auth {
    /// JWT mode with `secret` and the default checks, or local mode without one.
    pub fn new(secret: Option<&str>) -> Self {
        match secret {
            None => Self::Local,
            Some(secret) => Self::jwt(JwtOptions {
                secret: secret.to_owned(),
                ..JwtOptions::default()
            }),
        }
    }

    /// JWT mode as `options` say.
    pub fn jwt(options: JwtOptions) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        required.extend(options.issuer.as_ref().map(|_| "iss"));
        required.extend(options.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.leeway = options.leeway_seconds;
        validation.validate_nbf = true;
        match &options.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &options.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Self::Jwt {
            key: DecodingKey::from_secret(options.secret.as_bytes()),
            validation: Box::new(validation),
            leeway: options.leeway_seconds,
            api_keys: options
                .api_keys
                .into_iter()
                .map(|(user, key)| (Sha256::digest(key.as_bytes()).into(), user))
                .collect(),
        }
    }

    /// Whether this is local mode.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local)
    }

    /// The user a token names, or why it is refused. Where `api_key` is
    /// true (the OpenAI-compatible routes), the token may be an API key.
    pub fn verify(&self, token: Option<&str>, api_key: bool) -> Result<String, ApiError> {
        let Self::Jwt {
            key,
            validation,
            leeway,
            api_keys,
        } = self
        else {
            return Ok(LOCAL_USER.to_owned());
        };
        let token = token.ok_or_else(|| {
            unauthorized("missing token: send Authorization: Bearer <JWT>".into())
        })?;
        if api_key && let Some(user) = api_key_user(api_keys, token) {
            return Ok(user);
        }
        check_header(token).map_err(|e| {
            if api_key && !api_keys.is_empty() {
                unauthorized("invalid token: neither a known API key nor a JWT".into())
            } else {
                e
            }
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| unauthorized(describe(&e)))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(unauthorized("invalid token: its sub is empty".into()));
        }
        if claims.sub.len() > MAX_SUB_BYTES || claims.sub.chars().any(char::is_control) {
            return Err(unauthorized(format!(
                "invalid token: its sub must be at most {MAX_SUB_BYTES} bytes, without control characters"
            )));
        }
        if claims
            .iat
            .is_some_and(|iat| iat > now().saturating_add(*leeway))
        {
            return Err(unauthorized(
                "invalid token: it was issued in the future (iat); check the issuer's clock".into(),
            ));
        }
        Ok(claims.sub)
    }
}

fn unauthorized(message: String) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The user of the API key `token`, if it is one. Every key's digest is
/// compared, each in constant time, so the time taken says nothing of
/// which key, or how much of one, matched.
fn api_key_user(api_keys: &[([u8; 32], String)], token: &str) -> Option<String> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for (key, user) in api_keys {
        if bool::from(key.ct_eq(&digest)) {
            found = Some(user.clone());
        }
    }
    found
}

/// Refuses, in words, a token that is not a JWT or not signed with HS256,
/// before the library would say so in its own terms.
fn check_header(token: &str) -> Result<(), ApiError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauthorized(
            "invalid token: a JWT is three base64url parts separated by dots".into(),
        ));
    };
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    // RFC 7515 §4.1.11: extensions listed as critical must be understood,
    // and this server understands none.
    if header.as_ref().is_some_and(|h| h.get("crit").is_some()) {
        return Err(unauthorized(
            "invalid token: its header lists critical extensions (crit), which this server does not support"
                .into(),
        ));
    }
    let alg = header
        .and_then(|header| header.get("alg")?.as_str().map(str::to_owned))
        .ok_or_else(|| {
            unauthorized("invalid token: its header is not JSON naming an alg".into())
        })?;
    if alg != "HS256" {
        let alg: String = alg.chars().take(16).collect();
        return Err(unauthorized(format!(
            "invalid token: it is signed with {alg:?}, and only HS256 is accepted"
        )));
    }
    Ok(())
}

/// What is wrong with a token, in words.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    let what = match e.kind() {
        ErrorKind::ExpiredSignature => "it has expired (exp)".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => {
            "its signature does not match this server's secret".to_owned()
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "only HS256 is accepted".to_owned()
        }
        ErrorKind::InvalidIssuer => {
            "its issuer (iss) is not the one this server accepts".to_owned()
        }
        ErrorKind::InvalidAudience => {
            "its audience (aud) is not the one this server accepts".to_owned()
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            let claim: String = claim.chars().take(16).collect();
            format!("it has no {claim} claim")
        }
        ErrorKind::InvalidSubject => "its sub is not accepted".to_owned(),
        ErrorKind::Json(json) => {
            let text = json.to_string();
            match ["sub", "exp"]
                .into_iter()
                .find(|claim| text.contains(&format!("missing field `{claim}`")))
            {
                Some(claim) => format!("it has no {claim} claim"),
                None => "its claims are not what this server reads \
                         (sub: text; exp, nbf, iat: whole seconds)"
                    .to_owned(),
            }
        }
        _ => "it is not a well-formed JWT".to_owned(),
    };
    format!("invalid token: {what}")
}

/// The claims Sluice reads and writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not valid before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Signs an HS256 token for `sub` that expires at `exp` (Unix seconds),
/// issued now.
pub fn mint(secret: &str, sub: &str, exp: u64) -> Result<String, jsonwebtoken::errors::Error> {
    mint_claims(
        secret,
        &Claims {
            sub: sub.to_owned(),
            exp,
            nbf: None,
            iat: Some(now()),
        },
    )
}

/// Signs `claims` with HS256.
pub fn mint_claims(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The routes where the token may come as the `access_token` query
/// parameter, since browsers cannot set headers on a WebSocket or an
/// `EventSource`: matched by route, so no other path qualifies by its ending.
pub const QUERY_TOKEN_ROUTES: [&str; 2] = ["/v1/sessions/{id}/ws", "/v1/sessions/{id}/events"];

/// The routes where an API key may stand for a token: the OpenAI-compatible
/// API, for servers calling it.
pub const API_KEY_ROUTES: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/{id}",
    "/v1/responses",
    "/v1/responses/{id}",
];

/// The authenticated caller. On [`QUERY_TOKEN_ROUTES`] the token may also
/// come as the `access_token` query parameter. Each request it
/// authenticates counts against the caller's requests per minute.
#[derive(Debug, Clone)]
pub struct User(pub String);

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

fn token_of(req: &HttpRequest, route: Option<&str>) -> Option<String> {
    if let Some(value) = req.headers().get("authorization") {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned());
    }
    if route.is_some_and(|r| QUERY_TOKEN_ROUTES.contains(&r)) {
        let query = web::Query::<TokenQuery>::from_query(req.query_string()).ok()?;
        return query.into_inner().access_token;
    }
    None
}

impl FromRequest for User {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let (Some(auth), Some(state)) = (
            req.app_data::<web::Data<Auth>>(),
            req.app_data::<web::Data<AppState>>(),
        ) else {
            return Box::pin(async { Err(ApiError::new(ErrorCode::Internal, "auth missing")) });
        };
        let route = req.match_pattern();
        let token = token_of(req, route.as_deref());
        let api_key = route.is_some_and(|r| API_KEY_ROUTES.contains(&r.as_str()));
        let user = auth.verify(token.as_deref(), api_key);
        let limits = state.limits.clone();
        Box::pin(async move {
            let user = user?;
            tracing::Span::current().record("user", user.as_str());
            limits.request(&user).await?;
            Ok(User(user))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret";

    fn claims(sub: &str, exp: i64) -> Claims {
        Claims {
            sub: sub.to_owned(),
            exp: now().saturating_add_signed(exp),
            nbf: None,
            iat: None,
        }
    }

    fn signed(claims: &Claims) -> String {
        mint_claims(SECRET, claims).unwrap()
    }

    /// Refused, and the message says `what`.
    fn refused(auth: &Auth, token: &str, what: &str) {
        let err = auth.verify(Some(token), false).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthorized, "{token}");
        assert!(err.message.contains(what), "{what}: {}", err.message);
        assert!(
            !err.message.contains("JSON") && !err.message.contains("line 1"),
            "{}",
            err.message
        );
    }

    fn with_part(token: &str, index: usize, json: &str) -> String {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[index] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        parts.join(".")
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused_in_words() {
        let auth = Auth::new(Some(SECRET));
        let good = mint(SECRET, "alice", now() + 60).unwrap();
        assert_eq!(auth.verify(Some(&good), false).unwrap(), "alice");
        let err = auth.verify(None, false).unwrap_err();
        assert!(err.message.contains("missing token"));
        refused(&auth, "garbage", "three base64url parts");
        refused(
            &auth,
            &mint("other", "alice", now() + 60).unwrap(),
            "signature does not match",
        );
        refused(&auth, &signed(&claims("alice", -10)), "expired");
        refused(&auth, &signed(&claims("", 60)), "sub is empty");
        // `alg: none` and other algorithms are refused by name.
        let none = with_part(&good, 0, r#"{"alg":"none","typ":"JWT"}"#);
        refused(&auth, &none, "signed with \"none\", and only HS256");
        let rs = with_part(&good, 0, r#"{"alg":"RS256","typ":"JWT"}"#);
        refused(&auth, &rs, "only HS256");
        let crit = with_part(&good, 0, r#"{"alg":"HS256","crit":["exp2"],"exp2":1}"#);
        refused(&auth, &crit, "critical extensions");
        // Claims missing or of the wrong type.
        let no_sub = with_part(&good, 1, r#"{"exp":99999999999}"#);
        refused(&auth, &no_sub, "signature");
        let no_sub = signed_json(r#"{"exp":99999999999}"#);
        refused(&auth, &no_sub, "no sub claim");
        let numeric_sub = signed_json(r#"{"sub":7,"exp":99999999999}"#);
        refused(&auth, &numeric_sub, "sub: text");
    }

    fn signed_json(claims: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(claims).unwrap();
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &value,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn nbf_iat_and_clock_skew() {
        let auth = Auth::jwt(JwtOptions {
            secret: SECRET.into(),
            leeway_seconds: 30,
            ..JwtOptions::default()
        });
        let mut c = claims("alice", 3600);
        c.nbf = Some(now() + 600);
        refused(&auth, &signed(&c), "not valid yet (nbf)");
        c.nbf = Some(now() + 10);
        assert_eq!(auth.verify(Some(&signed(&c)), false).unwrap(), "alice");
        c.nbf = None;
        c.iat = Some(now() + 600);
        refused(&auth, &signed(&c), "issued in the future (iat)");
        c.iat = Some(now() + 10);
        assert_eq!(auth.verify(Some(&signed(&c)), false).unwrap(), "alice");
        // Expired 10 s ago: within the skew.
        assert!(auth.verify(Some(&signed(&claims("a", -10))), false).is_ok());
        refused(&auth, &signed(&claims("a", -100)), "expired");
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let auth = Auth::jwt(JwtOptions {
            secret: SECRET.into(),
            issuer: Some("https://id.example".into()),
            audience: Some("sluice".into()),
            ..JwtOptions::default()
        });
        let exp = now() + 60;
        let good = signed_json(&format!(
            r#"{{"sub":"a","exp":{exp},"iss":"https://id.example","aud":"sluice"}}"#
        ));
        assert_eq!(auth.verify(Some(&good), false).unwrap(), "a");
        let wrong_iss = signed_json(&format!(
            r#"{{"sub":"a","exp":{exp},"iss":"https://evil.example","aud":"sluice"}}"#
        ));
        refused(&auth, &wrong_iss, "issuer (iss)");
        let wrong_aud = signed_json(&format!(
            r#"{{"sub":"a","exp":{exp},"iss":"https://id.example","aud":"other"}}"#
        ));
        refused(&auth, &wrong_aud, "audience (aud)");
        let no_iss = signed_json(&format!(r#"{{"sub":"a","exp":{exp},"aud":"sluice"}}"#));
        refused(&auth, &no_iss, "iss");
        // Without configured checks, a token's own iss and aud are not held against it.
        let plain = Auth::new(Some(SECRET));
        assert_eq!(plain.verify(Some(&wrong_aud), false).unwrap(), "a");
    }

    #[test]
    fn api_keys_name_their_user_only_where_allowed() {
        let key = "sk-sluice-0123456789abcdef0123456789abcdef";
        let auth = Auth::jwt(JwtOptions {
            secret: SECRET.into(),
            api_keys: vec![("batch-jobs".into(), key.into())],
            ..JwtOptions::default()
        });
        assert_eq!(auth.verify(Some(key), true).unwrap(), "batch-jobs");
        // Elsewhere, or a near miss, it is just a bad token.
        refused(&auth, key, "three base64url parts");
        let near = format!("{}x", &key[..key.len() - 1]);
        assert!(auth.verify(Some(&near), true).is_err());
        // Tokens still work where keys do.
        let good = mint(SECRET, "alice", now() + 60).unwrap();
        assert_eq!(auth.verify(Some(&good), true).unwrap(), "alice");
        let Auth::Jwt { api_keys, .. } = &auth else {
            unreachable!()
        };
        assert!(
            api_keys.iter().all(|(digest, _)| digest != key.as_bytes()),
            "keys are kept as digests"
        );
    }

    #[test]
    fn local_mode_is_user_local() {
        assert_eq!(Auth::new(None).verify(None, false).unwrap(), LOCAL_USER);
    }
}
