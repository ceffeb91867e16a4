//! Single sign-on of the reporting API against a real, certified OpenID provider
//! (`oidc-provider`): tokens it signs are accepted with the roles they carry, and each kind
//! of bad token is refused: none, expired, not yet valid, for another audience, from another
//! issuer, signed by a key the provider never published, or with a role that lacks the
//! permission. Rotated keys are followed without a restart.

use std::time::Duration;

use anyhow::Result;
use testkit::oidc::{OidcAccount, OidcClient, OidcOptions, OidcProvider, OldKeys};
use tests::pki::TestPki;
use tests::reporting::{config, start_in_process, Api, Database};

const CALLBACK: &str = "https://localhost:8443/callback";

fn options() -> OidcOptions {
    OidcOptions::default()
        .client(OidcClient::service(
            "wallboard",
            "wallboard-secret",
            &["viewer"],
        ))
        .client(OidcClient::service(
            "finance",
            "finance-secret",
            &["analyst"],
        ))
        .client(OidcClient::service("nobody", "nobody-secret", &["guest"]))
        .client(
            OidcClient::service("brief", "brief-secret", &["admin"])
                .access_token_ttl(Duration::from_secs(1)),
        )
        .client(OidcClient::service("early", "early-secret", &["admin"]).not_before_offset(600))
        .client(OidcClient::public("reporting-dashboard", &[CALLBACK]))
        .account(OidcAccount::new("anna", &["dispatcher"]))
}

/// The reporting service trusting `provider`.
async fn service(database: &Database, provider: &OidcProvider, pki: &TestPki) -> Result<Api> {
    let mut settings = config(&database.url(), pki);
    settings.auth.oidc = Some(reporting::config::OidcConfig {
        issuer: provider.issuer().to_owned(),
        audience: provider.audience().to_owned(),
        roles_claim: "roles".to_owned(),
        client_id: "reporting-dashboard".to_owned(),
        leeway_s: 0,
        jwks_min_refresh_s: 0,
        ca: None,
    });
    start_in_process(settings, pki).await
}

/// The status and error of `GET path` with `token`.
async fn status(api: &Api, path: &str, token: &str) -> Result<(u16, String)> {
    let answer = api.get(path, Some(token)).await?;
    let error = answer
        .json()
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok((answer.status, error))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_provider_are_accepted_with_their_roles_and_bad_ones_refused() -> Result<()> {
    tests::init();
    let database = Database::start().await?;
    let mut provider = OidcProvider::start(options()).await?;
    let pki = TestPki::new()?;
    let api = service(&database, &provider, &pki).await?;
    let audience = provider.audience().to_owned();
    let invoices = "/v1/invoices?from=2026-06-01T00:00:00Z&to=2026-06-02T00:00:00Z";

    let viewer = provider
        .client_credentials_token("wallboard", "wallboard-secret", &audience)
        .await?;
    let me = api.get("/v1/me", Some(&viewer)).await?.json()?;
    assert_eq!(me["name"], "wallboard");
    assert_eq!(me["roles"], serde_json::json!(["viewer"]));
    assert_eq!(status(&api, "/v1/fleet", &viewer).await?.0, 200);
    assert_eq!(
        status(&api, invoices, &viewer).await?.0,
        403,
        "viewers see no invoices"
    );
    let analyst = provider
        .client_credentials_token("finance", "finance-secret", &audience)
        .await?;
    assert_eq!(status(&api, invoices, &analyst).await?.0, 200);
    let guest = provider
        .client_credentials_token("nobody", "nobody-secret", &audience)
        .await?;
    assert_eq!(
        status(&api, "/v1/fleet", &guest).await?.0,
        403,
        "an unknown role grants nothing"
    );

    // A person signed in with the authorization code flow and PKCE.
    let anna = provider
        .login("reporting-dashboard", None, CALLBACK, "anna")
        .await?;
    let me = api.get("/v1/me", Some(&anna.access_token)).await?.json()?;
    assert_eq!(me["roles"], serde_json::json!(["dispatcher"]), "{me}");
    assert!(me["permissions"]
        .as_array()
        .is_some_and(|p| p.contains(&serde_json::json!("orders.send"))));

    // Refused, each for its own reason.
    let other_audience = provider
        .client_credentials_token("finance", "finance-secret", "urn:someone-else")
        .await?;
    let (code, error) = status(&api, "/v1/fleet", &other_audience).await?;
    assert_eq!((code, error.contains("audience")), (401, true), "{error}");

    let early = provider
        .client_credentials_token("early", "early-secret", &audience)
        .await?;
    let (code, error) = status(&api, "/v1/fleet", &early).await?;
    assert_eq!(
        (code, error.contains("not valid yet")),
        (401, true),
        "{error}"
    );

    let brief = provider
        .client_credentials_token("brief", "brief-secret", &audience)
        .await?;
    assert_eq!(status(&api, "/v1/fleet", &brief).await?.0, 200);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (code, error) = status(&api, "/v1/fleet", &brief).await?;
    assert_eq!((code, error.contains("expired")), (401, true), "{error}");

    let unpublished = provider
        .token_signed_by_unpublished_key("finance", "finance-secret", &audience)
        .await?;
    let (code, error) = status(&api, "/v1/fleet", &unpublished).await?;
    assert_eq!(
        (code, error.contains("unknown signing key")),
        (401, true),
        "{error}"
    );

    let mut elsewhere = OidcProvider::start(options()).await?;
    let foreign = elsewhere
        .client_credentials_token("finance", "finance-secret", &audience)
        .await?;
    assert_eq!(
        status(&api, "/v1/fleet", &foreign).await?.0,
        401,
        "another issuer"
    );
    elsewhere.stop().await?;

    let mut tampered = analyst.clone();
    tampered.pop();
    tampered.push(if analyst.ends_with('A') { 'B' } else { 'A' });
    let (code, error) = status(&api, "/v1/fleet", &tampered).await?;
    assert_eq!(code, 401, "a changed signature: {error}");

    // The provider rotates its keys and drops the old one: new tokens are accepted without
    // a restart, and once the service has seen the new key set, old tokens are not.
    provider.rotate_keys(OldKeys::Dropped).await?;
    let rotated = provider
        .client_credentials_token("finance", "finance-secret", &audience)
        .await?;
    assert_eq!(status(&api, invoices, &rotated).await?.0, 200);
    let (code, error) = status(&api, invoices, &analyst).await?;
    assert_eq!(
        (code, error.contains("unknown signing key")),
        (401, true),
        "{error}"
    );
    Ok(())
}
