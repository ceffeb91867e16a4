//! The OpenID provider harness against the real oidc-provider: discovery, client-credentials
//! JWTs and their claims, lifetimes, key rotation, unpublished keys, the authorization-code
//! flow with PKCE, and refusals.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use testkit::oidc::{
    jwt_parts, AuthorizationRequest, OidcAccount, OidcClient, OidcOptions, OidcProvider, OldKeys,
    Pkce,
};

const DASHBOARD_CALLBACK: &str = "http://127.0.0.1:9/callback";
const BROWSER_CALLBACK: &str = "http://127.0.0.1:9/app";

fn options() -> OidcOptions {
    OidcOptions::default()
        .client(OidcClient::service(
            "ingest-job",
            "job-secret",
            &["dispatcher"],
        ))
        .client(OidcClient::web(
            "dashboard",
            "dashboard-secret",
            &[DASHBOARD_CALLBACK],
        ))
        .client(OidcClient::public("browser-app", &[BROWSER_CALLBACK]))
        .account(OidcAccount::new("alice", &["analyst"]).claim("name", "Alice Analyst"))
        .account(OidcAccount::new("bob", &["viewer", "admin"]))
        .default_account("bob")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

async fn published_kids(provider: &OidcProvider) -> anyhow::Result<Vec<String>> {
    let jwks = provider.jwks().await?;
    let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
    for key in &keys {
        assert!(key.get("d").is_none(), "a private key is published: {key}");
    }
    Ok(keys
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect())
}

fn kid(token: &str) -> String {
    let (header, _) = jwt_parts(token).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn discovery_names_the_issuer_and_the_jwks() -> anyhow::Result<()> {
    let provider = OidcProvider::start(options()).await?;
    let discovery = provider.discovery().await?;
    assert_eq!(discovery["issuer"], json!(provider.issuer()));
    assert_eq!(discovery["jwks_uri"], json!(provider.jwks_uri()));
    assert_eq!(
        discovery["token_endpoint"],
        json!(provider.token_endpoint())
    );
    assert_eq!(
        discovery["authorization_endpoint"],
        json!(provider.authorization_endpoint())
    );
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );
    let grants = discovery["grant_types_supported"].to_string();
    assert!(grants.contains("client_credentials"), "{grants}");
    assert!(grants.contains("authorization_code"), "{grants}");
    assert_eq!(
        published_kids(&provider).await?,
        vec![provider.signing_kid().to_owned()]
    );
    Ok(())
}

#[tokio::test]
async fn client_credentials_token_is_a_jwt_with_the_configured_claims() -> anyhow::Result<()> {
    let provider = OidcProvider::start(options()).await?;
    let before = now();
    let token = provider
        .client_credentials_token("ingest-job", "job-secret", provider.audience())
        .await?;
    let (header, claims) = jwt_parts(&token)?;

    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    assert!(published_kids(&provider).await?.contains(&kid(&token)));
    assert_eq!(claims["iss"], json!(provider.issuer()));
    assert_eq!(claims["aud"], "urn:taxi-reporting");
    assert_eq!(claims["sub"], "ingest-job");
    assert_eq!(claims["client_id"], "ingest-job");
    assert_eq!(claims["roles"], json!(["dispatcher"]));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(iat >= before - 1 && iat <= now() + 1, "iat {iat}");
    assert_eq!(exp - iat, 600, "the default lifetime is ten minutes");
    assert!(claims.get("nbf").is_none(), "no nbf unless configured");

    // Another audience on request: the token is for that resource only.
    let other = provider
        .client_credentials_token("ingest-job", "job-secret", "urn:another-service")
        .await?;
    assert_eq!(jwt_parts(&other)?.1["aud"], "urn:another-service");

    // The whole response, with a scope.
    let response = provider
        .client_credentials_response(
            "ingest-job",
            "job-secret",
            provider.audience(),
            Some("reports"),
        )
        .await?;
    assert_eq!(response.token_type, "Bearer");
    assert_eq!(response.expires_in, Some(600));
    assert_eq!(jwt_parts(&response.access_token)?.1["scope"], "reports");
    Ok(())
}

#[tokio::test]
async fn lifetimes_not_before_and_claim_name_are_configurable() -> anyhow::Result<()> {
    let provider = OidcProvider::start(
        OidcOptions::default()
            .audience("urn:fleet-api")
            .roles_claim("taxi_roles")
            .access_token_ttl(Duration::from_secs(5))
            .client(OidcClient::service("normal", "s1", &["viewer"]))
            .client(
                OidcClient::service("short", "s2", &["viewer"])
                    .access_token_ttl(Duration::from_secs(2)),
            )
            .client(OidcClient::service("early", "s3", &["admin"]).not_before_offset(60)),
    )
    .await?;

    let claims = |token: &str| jwt_parts(token).map(|(_, claims)| claims);
    let normal = claims(
        &provider
            .client_credentials_token("normal", "s1", "urn:fleet-api")
            .await?,
    )?;
    assert_eq!(normal["aud"], "urn:fleet-api");
    assert_eq!(normal["taxi_roles"], json!(["viewer"]));
    assert!(normal.get("roles").is_none());
    assert_eq!(
        normal["exp"].as_i64().unwrap() - normal["iat"].as_i64().unwrap(),
        5
    );

    let short = claims(
        &provider
            .client_credentials_token("short", "s2", "urn:fleet-api")
            .await?,
    )?;
    assert_eq!(
        short["exp"].as_i64().unwrap() - short["iat"].as_i64().unwrap(),
        2
    );

    let early = claims(
        &provider
            .client_credentials_token("early", "s3", "urn:fleet-api")
            .await?,
    )?;
    assert_eq!(
        early["nbf"].as_i64().unwrap() - early["iat"].as_i64().unwrap(),
        60
    );
    Ok(())
}

#[tokio::test]
async fn rotated_keys_change_the_kid_and_old_keys_stay_or_go() -> anyhow::Result<()> {
    let mut provider = OidcProvider::start(options()).await?;
    let issuer = provider.issuer().to_owned();
    let first = provider
        .client_credentials_token("ingest-job", "job-secret", provider.audience())
        .await?;
    let first_kid = kid(&first);
    assert_eq!(first_kid, provider.signing_kid());

    // A normal rotation: the new key signs, the old one is still published.
    let second_kid = provider.rotate_keys(OldKeys::Published).await?;
    assert_ne!(second_kid, first_kid);
    assert_eq!(provider.issuer(), issuer, "same port, same issuer");
    assert_eq!(provider.signing_kid(), second_kid);
    let second = provider
        .client_credentials_token("ingest-job", "job-secret", provider.audience())
        .await?;
    assert_eq!(kid(&second), second_kid);
    assert_eq!(jwt_parts(&second)?.1["iss"], json!(issuer));
    let kids = published_kids(&provider).await?;
    assert_eq!(kids, vec![second_kid.clone(), first_kid.clone()]);
    assert_eq!(kids, provider.published_kids());

    // A rotation that drops the old keys: the earlier tokens' kids are unknown now.
    let third_kid = provider.rotate_keys(OldKeys::Dropped).await?;
    assert_eq!(published_kids(&provider).await?, vec![third_kid.clone()]);
    let third = provider
        .client_credentials_token("ingest-job", "job-secret", provider.audience())
        .await?;
    assert_eq!(kid(&third), third_kid);
    assert!(!published_kids(&provider).await?.contains(&first_kid));
    Ok(())
}

#[tokio::test]
async fn a_token_signed_by_an_unpublished_key_has_an_unknown_kid() -> anyhow::Result<()> {
    let provider = OidcProvider::start(options()).await?;
    let token = provider
        .token_signed_by_unpublished_key("ingest-job", "job-secret", provider.audience())
        .await?;
    let (_, claims) = jwt_parts(&token)?;
    assert_eq!(claims["iss"], json!(provider.issuer()));
    assert_eq!(claims["aud"], "urn:taxi-reporting");
    assert_eq!(claims["roles"], json!(["dispatcher"]));
    assert!(!published_kids(&provider).await?.contains(&kid(&token)));
    // The provider itself is untouched.
    provider
        .client_credentials_token("ingest-job", "job-secret", provider.audience())
        .await?;
    Ok(())
}

#[tokio::test]
async fn authorization_code_with_pkce_yields_the_accounts_roles() -> anyhow::Result<()> {
    let provider = OidcProvider::start(options()).await?;

    // Step by step, as the dashboard does it.
    let pkce = Pkce::new();
    let request = AuthorizationRequest::new("dashboard", DASHBOARD_CALLBACK, &pkce)
        .scope("openid profile")
        .login_hint("alice");
    let url = provider.authorization_url(&request)?;
    assert!(url.starts_with(&provider.authorization_endpoint()), "{url}");
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let response = provider.authorize(&request).await?;
    assert_eq!(response.state.as_deref(), Some(request.state.as_str()));
    assert_eq!(response.iss.as_deref(), Some(provider.issuer()));
    assert!(
        response.url.starts_with(DASHBOARD_CALLBACK),
        "{}",
        response.url
    );

    // The wrong verifier is refused, and the code is then spent.
    let wrong = provider
        .exchange_code(
            "dashboard",
            Some("dashboard-secret"),
            &response.code,
            DASHBOARD_CALLBACK,
            &Pkce::new().verifier,
        )
        .await;
    assert!(format!("{:#}", wrong.unwrap_err()).contains("invalid_grant"));

    let response = provider.authorize(&request).await?;
    let tokens = provider
        .exchange_code(
            "dashboard",
            Some("dashboard-secret"),
            &response.code,
            DASHBOARD_CALLBACK,
            &pkce.verifier,
        )
        .await?;
    let (header, access) = jwt_parts(&tokens.access_token)?;
    assert!(published_kids(&provider)
        .await?
        .contains(&header["kid"].as_str().unwrap_or_default().to_owned()));
    assert_eq!(access["iss"], json!(provider.issuer()));
    assert_eq!(access["aud"], "urn:taxi-reporting");
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["client_id"], "dashboard");
    assert_eq!(access["roles"], json!(["analyst"]));
    let id_token = tokens.id_token.as_deref().unwrap_or_default();
    let (_, id) = jwt_parts(id_token)?;
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["aud"], "dashboard");
    assert_eq!(id["nonce"], json!(request.nonce));

    // In one call, for a public client and the default account.
    let tokens = provider
        .login("browser-app", None, BROWSER_CALLBACK, "bob")
        .await?;
    let access: Value = jwt_parts(&tokens.access_token)?.1;
    assert_eq!(access["sub"], "bob");
    assert_eq!(access["roles"], json!(["viewer", "admin"]));
    let pkce = Pkce::new();
    let without_hint = AuthorizationRequest::new("browser-app", BROWSER_CALLBACK, &pkce);
    let code = provider.authorize(&without_hint).await?.code;
    let tokens = provider
        .exchange_code("browser-app", None, &code, BROWSER_CALLBACK, &pkce.verifier)
        .await?;
    assert_eq!(jwt_parts(&tokens.access_token)?.1["sub"], "bob");
    Ok(())
}

#[tokio::test]
async fn refusals() -> anyhow::Result<()> {
    let provider = OidcProvider::start(options()).await?;

    let wrong_secret = provider
        .client_credentials_token("ingest-job", "not-the-secret", provider.audience())
        .await;
    let error = format!("{:#}", wrong_secret.unwrap_err());
    assert!(error.contains("invalid_client"), "{error}");

    let unknown_client = provider
        .client_credentials_token("nobody", "x", provider.audience())
        .await;
    assert!(format!("{:#}", unknown_client.unwrap_err()).contains("invalid_client"));

    // A client without the grant.
    let not_allowed = provider
        .client_credentials_token("dashboard", "dashboard-secret", provider.audience())
        .await;
    let error = format!("{:#}", not_allowed.unwrap_err());
    assert!(error.contains("grant type is not allowed"), "{error}");

    // An account that does not exist is refused at the redirect URI.
    let request = AuthorizationRequest::new("dashboard", DASHBOARD_CALLBACK, &Pkce::new())
        .login_hint("mallory");
    let error = format!("{:#}", provider.authorize(&request).await.unwrap_err());
    assert!(error.contains("access_denied"), "{error}");

    // PKCE is required: a request without a challenge is refused.
    let request = AuthorizationRequest {
        code_challenge: String::new(),
        ..AuthorizationRequest::new("dashboard", DASHBOARD_CALLBACK, &Pkce::new())
    };
    let error = format!("{:#}", provider.authorize(&request).await.unwrap_err());
    assert!(error.contains("invalid_request"), "{error}");
    Ok(())
}

/// Verifies `token` the way a resource server does: the key its `kid` names in the JWKS, RS256,
/// issuer, audience, `exp` and `nbf` without leeway.
async fn verify(provider: &OidcProvider, token: &str) -> Result<Value, String> {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwks: JwkSet = serde_json::from_value(provider.jwks().await.map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let jwk = jwks.find(&kid).ok_or(format!("unknown kid {kid}"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[provider.issuer()]);
    validation.set_audience(&[provider.audience()]);
    validation.validate_nbf = true;
    validation.leeway = 0;
    decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("{:?}", e.kind()))
}

#[tokio::test]
async fn tokens_verify_with_the_published_keys_until_they_expire() -> anyhow::Result<()> {
    let mut provider = OidcProvider::start(
        options()
            .client(
                OidcClient::service("brief", "s", &["viewer"])
                    .access_token_ttl(Duration::from_secs(1)),
            )
            .client(OidcClient::service("early", "s", &["viewer"]).not_before_offset(3600)),
    )
    .await?;
    let machine = provider
        .client_credentials_token("ingest-job", "job-secret", provider.audience())
        .await?;
    assert_eq!(
        verify(&provider, &machine)
            .await
            .map_err(anyhow::Error::msg)?["roles"],
        json!(["dispatcher"])
    );
    let person = provider
        .login(
            "dashboard",
            Some("dashboard-secret"),
            DASHBOARD_CALLBACK,
            "alice",
        )
        .await?;
    assert_eq!(
        verify(&provider, &person.access_token)
            .await
            .map_err(anyhow::Error::msg)?["roles"],
        json!(["analyst"])
    );

    // Another audience, a token not valid yet, a forged key: refused.
    let elsewhere = provider
        .client_credentials_token("ingest-job", "job-secret", "urn:another-service")
        .await?;
    assert_eq!(
        verify(&provider, &elsewhere).await.unwrap_err(),
        "InvalidAudience"
    );
    let early = provider
        .client_credentials_token("early", "s", provider.audience())
        .await?;
    assert_eq!(
        verify(&provider, &early).await.unwrap_err(),
        "ImmatureSignature"
    );
    let forged = provider
        .token_signed_by_unpublished_key("ingest-job", "job-secret", provider.audience())
        .await?;
    assert!(verify(&provider, &forged)
        .await
        .unwrap_err()
        .starts_with("unknown kid"));

    // Expiry: a one-second token is refused once its second has passed.
    let brief = provider
        .client_credentials_token("brief", "s", provider.audience())
        .await?;
    verify(&provider, &brief)
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        verify(&provider, &brief).await.unwrap_err(),
        "ExpiredSignature"
    );

    // Rotation keeping the old key: old and new tokens verify. Dropping it: the old ones fail.
    provider.rotate_keys(OldKeys::Published).await?;
    verify(&provider, &machine)
        .await
        .map_err(anyhow::Error::msg)?;
    let rotated = provider
        .client_credentials_token("ingest-job", "job-secret", provider.audience())
        .await?;
    verify(&provider, &rotated)
        .await
        .map_err(anyhow::Error::msg)?;
    provider.rotate_keys(OldKeys::Dropped).await?;
    assert!(verify(&provider, &machine)
        .await
        .unwrap_err()
        .starts_with("unknown kid"));
    Ok(())
}
