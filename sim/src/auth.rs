//! Who is asking: a personal access token, or an App installation token
//! bought with the App's RS256 JWT.

use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    Sim,
    answer::{Answer, message},
    state::{Grant, now_secs, rfc3339},
};

/// The token of `Authorization: Bearer ...` (or GitHub's older `token ...`).
pub(crate) fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")))
        .map(str::to_owned)
}

/// What `token` may do, or GitHub's 401.
pub(crate) fn grant(sim: &Sim, token: Option<&str>) -> Result<Grant, Answer> {
    let grant = token.and_then(|t| sim.inner.lock().unwrap().tokens.get(t).cloned());
    grant.filter(Grant::valid).ok_or_else(|| message(StatusCode::UNAUTHORIZED, "Bad credentials").into())
}

impl Sim {
    /// The App whose RS256 JWT `jwt` is, or GitHub's 401: the issuer names
    /// the App and its key must have signed the token.
    pub(crate) fn app_of(&self, jwt: Option<&str>) -> Result<u64, Answer> {
        #[derive(Deserialize)]
        struct Claims {
            iss: Value,
            iat: u64,
            exp: u64,
        }
        let refuse = |text: &str| -> Answer { message(StatusCode::UNAUTHORIZED, text).into() };
        let Some(jwt) = jwt else { return Err(refuse("A JSON web token could not be decoded")) };
        let Ok(header) = jsonwebtoken::decode_header(jwt) else {
            return Err(refuse("A JSON web token could not be decoded"));
        };
        if header.alg != jsonwebtoken::Algorithm::RS256 {
            return Err(refuse(
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            ));
        }
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Claims>(jwt);
        let Some(app_id) = unverified.ok().and_then(|t| match t.claims.iss {
            Value::String(s) => s.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        }) else {
            return Err(refuse("'Issuer' claim ('iss') must be an Integer"));
        };
        let s = self.inner.lock().unwrap();
        let Some(app) = s.apps.get(&app_id) else { return Err(refuse("Integration not found")) };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.required_spec_claims = ["exp", "iat", "iss"].into_iter().map(str::to_owned).collect();
        validation.leeway = 0;
        let claims = match jsonwebtoken::decode::<Claims>(jwt, &app.public_key, &validation) {
            Ok(t) => t.claims,
            Err(_) => return Err(refuse("A JSON web token could not be decoded")),
        };
        // GitHub refuses tokens that live more than 10 minutes or come from the future.
        if claims.exp.saturating_sub(claims.iat) > 600 || claims.iat > now_secs() + 60 {
            return Err(refuse("'Expiration time' claim ('exp') is too far in the future"));
        }
        Ok(app_id)
    }

    /// `POST /app/installations/{id}/access_tokens`, authenticated by the
    /// App's RS256 JWT: a one-hour token for the installation's account.
    pub(crate) fn installation_token(&self, installation: u64, jwt: Option<&str>) -> Answer {
        let app_id = match self.app_of(jwt) {
            Ok(id) => id,
            Err(answer) => return answer,
        };
        let mut s = self.inner.lock().unwrap();
        let Some(account) = s.apps.get(&app_id).and_then(|a| a.installations.get(&installation)).cloned()
        else {
            return message(StatusCode::NOT_FOUND, "Not Found").into();
        };
        let token = format!("ghs_{}", hex::encode(rand::random::<[u8; 18]>()));
        let expires = now_secs() + 3600;
        s.tokens.insert(token.clone(), Grant { expires: Some(expires), account: Some(account) });
        let mut a: Answer = (
            StatusCode::CREATED,
            json!({
                "token": token,
                "expires_at": rfc3339(expires),
                "permissions": { "repository_hooks": "write", "organization_hooks": "write" },
                "repository_selection": "all",
            }),
        )
            .into();
        // NB: as on GitHub, asking for an installation token spends no budget.
        a.free = true;
        a
    }
}
