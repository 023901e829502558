//! Authentication (PROTOCOL.md §1): JWT HS256 when a secret is configured,
//! otherwise local mode, where every request is user `local`.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sluice_protocol::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// The user id in local mode.
pub const LOCAL_USER: &str = "local";

/// How requests are authenticated.
pub enum Auth {
    /// No secret: everyone is [`LOCAL_USER`] (only allowed on loopback).
    Local,
    /// HS256 tokens signed with the secret.
    Jwt {
        /// The verification key.
        key: DecodingKey,
        /// Algorithm and `exp` checks (boxed: it is large, and `Auth` is
        /// built once).
        validation: Box<Validation>,
    },
}

impl Auth {
    /// JWT mode with `secret`, or local mode without one.
    pub fn new(secret: Option<&str>) -> Self {
        match secret {
            None => Self::Local,
            Some(secret) => {
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.leeway = 0;
                Self::Jwt {
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    validation: Box::new(validation),
                }
            }
        }
    }

    /// Whether this is local mode.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local)
    }

    /// The user a token names, or why it is refused.
    pub fn verify(&self, token: Option<&str>) -> Result<String, ApiError> {
        let (key, validation) = match self {
            Self::Local => return Ok(LOCAL_USER.to_owned()),
            Self::Jwt { key, validation } => (key, validation),
        };
        let token = token.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing token: send Authorization: Bearer <JWT>",
            )
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| ApiError::new(ErrorCode::Unauthorized, format!("invalid token: {e}")))?;
        if data.claims.sub.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "invalid token: empty sub",
            ));
        }
        Ok(data.claims.sub)
    }
}

/// The claims Sluice reads and writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Signs an HS256 token for `sub` that expires at `exp` (Unix seconds).
pub fn mint(secret: &str, sub: &str, exp: u64) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: sub.to_owned(),
            exp,
        },
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The routes where the token may come as the `access_token` query
/// parameter, since browsers cannot set headers on a WebSocket or an
/// `EventSource`: matched by route, so no other path qualifies by its ending.
pub const QUERY_TOKEN_ROUTES: [&str; 2] = ["/v1/sessions/{id}/ws", "/v1/sessions/{id}/events"];

/// The authenticated caller. On [`QUERY_TOKEN_ROUTES`] the token may also
/// come as the `access_token` query parameter. Each request it
/// authenticates counts against the caller's requests per minute.
#[derive(Debug, Clone)]
pub struct User(pub String);

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get("authorization") {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned());
    }
    let route = req.match_pattern();
    if route.is_some_and(|r| QUERY_TOKEN_ROUTES.contains(&r.as_str())) {
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
        let token = token_of(req);
        let user = auth.verify(token.as_deref());
        let limits = state.limits.clone();
        Box::pin(async move {
            let user = user?;
            limits.request(&user).await?;
            Ok(User(user))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let auth = Auth::new(Some("s3cret"));
        let good = mint("s3cret", "alice", now() + 60).unwrap();
        assert_eq!(auth.verify(Some(&good)).unwrap(), "alice");
        for bad in [
            None,
            Some("garbage".to_owned()),
            Some(mint("other", "alice", now() + 60).unwrap()),
            Some(mint("s3cret", "alice", now() - 10).unwrap()),
            Some(mint("s3cret", "", now() + 60).unwrap()),
        ] {
            let err = auth.verify(bad.as_deref()).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized, "{bad:?}");
        }
    }

    #[test]
    fn local_mode_is_user_local() {
        assert_eq!(Auth::new(None).verify(None).unwrap(), LOCAL_USER);
    }
}
