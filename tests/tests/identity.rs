//! A client is who its certificate says it is: certificates are checked in the TLS handshake
//! (missing, unknown CA, expired, revoked: refused and counted by reason) and the MQTT client
//! id must be the certificate's CN (an empty one becomes the CN).
//!
//! Every test here causes at most one kind of handshake failure, so that the per-reason
//! counters can be checked even when the tests share one process (`cargo test`).

use anyhow::{Context, Result};
use tests::{
    both_versions, position_json, raw, status_state, TestBroker, TestPki, Version,
    CONNACK_NOT_AUTHORIZED_V4, CONNACK_NOT_AUTHORIZED_V5, WAIT,
};

const HANDSHAKE_FAILURES: &str = "broker_handshake_failures_total";

async fn client_id_must_be_the_certificate_cn(version: Version, code: u8) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let taxi_a = pki.client("taxi-a", "taxi")?;

    for claimed in ["taxi-b", "taxi-a2", "TAXI-A", "taxi-a.1"] {
        let mut client = broker
            .client(&taxi_a)
            .version(version)
            .client_id(claimed)
            .start()?;
        assert_eq!(
            client.expect_refused().await?,
            Some(code),
            "client id {claimed:?} with a certificate for taxi-a"
        );
    }
    // The same certificate with its own id is fine.
    broker.client(&taxi_a).version(version).connect().await?;
    Ok(())
}

both_versions!(
    client_id_must_be_the_certificate_cn,
    CONNACK_NOT_AUTHORIZED_V4,
    CONNACK_NOT_AUTHORIZED_V5
);

/// An empty client id is the certificate's id: MQTT 5 gets it back as the Assigned Client
/// Identifier; MQTT 3.1.1 may leave it empty only with a clean session (MQTT-3.1.3-7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_is_the_certificate_id() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let taxi = pki.client("taxi-a", "taxi")?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator
        .subscribe_and_wait(&[("taxi/taxi-a/status", 1), ("taxi/taxi-a/position", 1)])
        .await?;

    let mut v5 = broker.client(&taxi).client_id("").v5().start()?;
    let (_, properties) = v5.expect_connack_v5().await?;
    let assigned = properties.and_then(|p| p.assigned_client_identifier);
    assert_eq!(
        assigned.as_deref(),
        Some("taxi-a"),
        "Assigned Client Identifier"
    );
    // It is taxi-a: its status goes online, it publishes as taxi-a.
    let status = operator.expect_publish("taxi/taxi-a/status").await?;
    assert_eq!(status_state(&status.payload)?, "online");
    let position = position_json(1);
    v5.publish_acked("taxi/taxi-a/position", false, &position)
        .await?;
    operator
        .expect_message("taxi/taxi-a/position", &position)
        .await?;
    v5.disconnect().await?;

    let mut v311 = broker.client(&taxi).client_id("").connect().await?;
    let position = position_json(2);
    v311.publish_acked("taxi/taxi-a/position", false, &position)
        .await?;
    operator
        .expect_message("taxi/taxi-a/position", &position)
        .await?;
    v311.disconnect().await?;

    // MQTT 3.1.1, empty id, clean session off: CONNACK 0x02 "identifier rejected".
    let mut raw = broker.raw(&taxi).await?;
    raw.send(&raw::connect("", false, 30)).await?;
    let answers = raw.read_until_closed(WAIT).await?;
    assert_eq!(
        answers,
        [raw::RawPacket {
            kind: raw::CONNACK,
            flags: 0,
            body: vec![0x00, 0x02],
        }]
    );
    Ok(())
}

/// A certificate of the right CA with a role the broker has no rules for gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_with_an_unknown_role_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    for version in [Version::V311, Version::V5] {
        let mut client = broker
            .client(&pki.client("dispatcher", "superuser")?)
            .version(version)
            .start()?;
        let expected = match version {
            Version::V311 => CONNACK_NOT_AUTHORIZED_V4,
            Version::V5 => CONNACK_NOT_AUTHORIZED_V5,
        };
        assert_eq!(client.expect_refused().await?, Some(expected));
    }
    Ok(())
}

/// Packets sent right behind a refused CONNECT are ignored, and no session (router state,
/// status, subscription) exists afterwards for either id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_id_never_gets_a_session() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/#", 1)]).await?;

    // taxi-a's certificate, claiming to be taxi-b, pipelining a subscription and a publish.
    let mut impostor = broker.raw(&pki.client("taxi-a", "taxi")?).await?;
    let mut burst = raw::connect("taxi-b", false, 30);
    burst.extend(raw::subscribe(1, "taxi/taxi-b/inbox", 1));
    burst.extend(raw::publish(
        "taxi/taxi-b/position",
        br#"{"impostor":true}"#,
        1,
        2,
    ));
    impostor.send(&burst).await?;
    let answers = impostor.read_until_closed(WAIT).await?;
    assert_eq!(
        answers,
        [raw::RawPacket {
            kind: raw::CONNACK,
            flags: 0,
            body: vec![0x00, CONNACK_NOT_AUTHORIZED_V4],
        }],
        "only a CONNACK 'not authorized', then the connection closes"
    );

    // The path is live: a legitimate publish after the refused one arrives ...
    let mut taxi_c = broker
        .client(&pki.client("taxi-c", "taxi")?)
        .connect()
        .await?;
    let marker = position_json(1);
    taxi_c
        .publish_acked("taxi/taxi-c/position", false, &marker)
        .await?;
    operator
        .expect_message("taxi/taxi-c/position", &marker)
        .await?;
    // ... and neither the impostor's publish nor a status for taxi-a or taxi-b did.
    let leaked: Vec<_> = operator
        .messages()
        .into_iter()
        .filter(|m| m.topic.starts_with("taxi/taxi-a/") || m.topic.starts_with("taxi/taxi-b/"))
        .collect();
    assert!(
        leaked.is_empty(),
        "a refused client left traces: {leaked:?}"
    );

    // The real taxi-b finds no session that the refused CONNECT (clean session off) created.
    let mut taxi_b = broker
        .client(&pki.client("taxi-b", "taxi")?)
        .clean_session(false)
        .start()?;
    let session_present = taxi_b.expect_connack().await?;
    assert!(
        !session_present,
        "a session for taxi-b exists although only a refused client used that id"
    );
    Ok(())
}

/// Connects with a certificate that the handshake must refuse, and checks the counter of
/// `reason`.
async fn assert_handshake_refused(
    broker: &TestBroker,
    client: tests::ClientBuilder,
    reason: &str,
) -> Result<()> {
    let labels = [("reason", reason)];
    let before = broker.metric(HANDSHAKE_FAILURES, &labels).await?;
    let mut client = client.start()?;
    let refusal = client.expect_refused().await?;
    assert_eq!(
        refusal, None,
        "the TLS handshake must fail before any CONNACK ({reason})"
    );
    broker
        .wait_for_metric(HANDSHAKE_FAILURES, &labels, before + 1.0, WAIT)
        .await
        .with_context(|| format!("handshake failure not counted as {reason}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_client_certificate_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    assert_handshake_refused(
        &broker,
        broker.client_without_certificate("taxi-1"),
        "no_certificate",
    )
    .await?;
    assert_handshake_refused(
        &broker,
        broker.client_without_certificate("taxi-1").v5(),
        "no_certificate",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let foreign = pki.foreign_client("taxi-1", "taxi")?;
    assert_handshake_refused(&broker, broker.client(&foreign), "unknown_ca").await?;
    // The same id with a certificate of the right CA is fine.
    broker
        .client(&pki.client("taxi-1", "taxi")?)
        .connect()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let expired = pki.expired_client("taxi-1", "taxi")?;
    assert_handshake_refused(&broker, broker.client(&expired), "expired").await?;
    assert_handshake_refused(&broker, broker.client(&expired).v5(), "expired").await
}

/// A CRL rewritten while the broker runs closes the live session of a revoked certificate
/// (with an offline status) and refuses revoked certificates from then on; other
/// certificates, including a new one for the same taxi, keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_and_their_sessions_closed() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator.subscribe_and_wait(&[("taxi/+/status", 1)]).await?;

    let live_cert = pki.client("taxi-live", "taxi")?;
    let idle_cert = pki.client("taxi-idle", "taxi")?;
    let mut live = broker.client(&live_cert).connect().await?;
    live.subscribe_and_wait(&[("taxi/taxi-live/inbox", 1)])
        .await?;
    let status = operator.expect_publish("taxi/taxi-live/status").await?;
    assert_eq!(status_state(&status.payload)?, "online");
    // The idle certificate works before it is revoked.
    broker
        .client(&idle_cert)
        .connect()
        .await?
        .disconnect()
        .await?;

    pki.revoke(&[&live_cert.serial, &idle_cert.serial])?;

    live.expect_disconnected()
        .await
        .context("the session of a revoked certificate must be closed after the CRL changes")?;
    operator
        .expect("offline status of taxi-live", WAIT, |event| match event {
            tests::Event::Publish(m)
                if m.topic == "taxi/taxi-live/status"
                    && status_state(&m.payload).ok().as_deref() == Some("offline") =>
            {
                Some(m.clone())
            }
            _ => None,
        })
        .await?;

    // The live session was closed after the reload, so the new CRL is in force now.
    let labels = [("reason", "revoked")];
    let before = broker.metric(HANDSHAKE_FAILURES, &labels).await?;
    for cert in [&idle_cert, &live_cert] {
        let mut client = broker.client(cert).start()?;
        assert_eq!(
            client.expect_refused().await?,
            None,
            "{} with a revoked certificate must fail in the handshake",
            cert.id
        );
    }
    broker
        .wait_for_metric(HANDSHAKE_FAILURES, &labels, before + 2.0, WAIT)
        .await?;

    // Others are unaffected, and a newly issued certificate for the same taxi works.
    broker
        .client(&pki.client("taxi-other", "taxi")?)
        .connect()
        .await?;
    broker
        .client(&pki.client("taxi-live", "taxi")?)
        .connect()
        .await?;
    Ok(())
}

/// A client that stops reading must not shield its session from revocation: the broker may
/// not wait forever to write to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_session_is_closed_even_when_its_client_stops_reading() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let operator_cert = pki.client("operator", "operator")?;
    let mut operator = broker.raw(&operator_cert).await?;
    operator.send(&raw::connect("operator", true, 0)).await?;
    operator.send(&raw::subscribe(1, "taxi/#", 0)).await?;
    for expected in [raw::CONNACK, raw::SUBACK] {
        let packet = operator.read_packet(WAIT).await?;
        assert_eq!(packet.map(|p| p.kind), Some(expected));
    }
    // From here on the operator reads nothing, while a taxi sends far more than the socket
    // buffers hold.
    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .connect()
        .await?;
    let mut payload = br#"{"seq":1,"ts_ms":1,"lat":1.0,"lon":1.0,"pad":""#.to_vec();
    payload.resize(60 * 1024, b'x');
    payload.extend_from_slice(br#""}"#);
    let count = 400;
    for _ in 0..count {
        taxi.publish("taxi/taxi-1/position", 1, false, &payload)
            .await?;
    }
    for n in 0..count {
        taxi.expect_puback()
            .await
            .with_context(|| format!("PUBACK {n} of {count}"))?;
    }
    broker.wait_for_sessions(2, WAIT).await?;

    pki.revoke(&[&operator_cert.serial])?;
    broker
        .wait_for_sessions(1, WAIT)
        .await
        .context("the revoked operator's session is still registered")?;
    Ok(())
}
