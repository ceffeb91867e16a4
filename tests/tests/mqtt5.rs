//! MQTT 5 features (and their MQTT 3.1.1 counterparts) as a client sees them, one behaviour
//! per test, with rumqttc and `mosquitto_pub`/`mosquitto_sub -V mqttv5`: delivery QoS, message
//! and session expiry, wills with properties and a delay, properties passed through,
//! subscription options and identifiers, the client's Maximum Packet Size and Receive
//! Maximum and the broker's, the keep-alive cap, topic aliases and QoS 2.
//!
//! Most tests use a `lab` role that may publish and subscribe under `lab/` (in their own
//! configuration only); the others use the platform's roles.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use tests::mqtt::{FilterV5, PublishProperties};
use tests::{
    both_versions, position_json, raw, status_state, Event, TestBroker, TestPki, Version, WAIT,
};

/// The lab role's certificates' role.
const LAB: &str = "lab";

async fn lab_broker(pki: &TestPki) -> Result<TestBroker> {
    lab_broker_with(pki, |_| {}).await
}

async fn lab_broker_with(
    pki: &TestPki,
    tweak: impl FnOnce(&mut broker::Config),
) -> Result<TestBroker> {
    TestBroker::start_with(pki, |config| {
        config.acl.insert(
            LAB.to_owned(),
            broker::acl::RoleRules {
                publish: vec!["lab/#".to_owned()],
                subscribe: vec!["lab/#".to_owned()],
                ..Default::default()
            },
        );
        tweak(config);
    })
    .await
}

fn filter(path: &str, qos: QoS) -> FilterV5 {
    FilterV5::new(path, qos)
}

/// No message at all on `topic` for a moment: for what must never come (a correct broker
/// passes this whatever the timing).
async fn assert_nothing_more(client: &mut tests::MqttClient, topic: &str) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let extra = client.messages_on(topic);
    ensure!(
        extra.is_empty(),
        "unexpected messages on {topic}: {extra:?}"
    );
    Ok(())
}

async fn delivered_qos_is_the_lower_of_message_and_subscription(version: Version) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .version(version)
        .connect()
        .await?;
    publisher
        .publish("lab/retained/0", 0, true, b"retained at 0")
        .await?;
    publisher
        .publish_acked("lab/retained/1", true, b"retained at 1")
        .await?;

    let mut subscriber = broker
        .client(&pki.client("subscriber", LAB)?)
        .version(version)
        .connect()
        .await?;
    let granted = subscriber
        .subscribe_and_wait(&[("lab/retained/+", 2), ("lab/live", 1)])
        .await?;
    assert_eq!(granted, [2, 1]);
    // Retained messages (in any order): at their own QoS, not the subscription's 2.
    let mut retained = Vec::new();
    while retained.len() < 2 {
        let message = subscriber
            .expect("a retained message", WAIT, |event| match event {
                Event::Publish(m) if m.topic.starts_with("lab/retained/") => Some(m.clone()),
                _ => None,
            })
            .await?;
        retained.push(message);
    }
    retained.sort_by(|a, b| a.topic.cmp(&b.topic));
    let qos_and_flag: Vec<_> = retained.iter().map(|m| (m.qos, m.retain)).collect();
    assert_eq!(qos_and_flag, [(0, true), (1, true)]);

    // Live messages: at most the subscription's QoS 1, never more than their own.
    publisher.publish("lab/live", 0, false, b"at 0").await?;
    publisher.publish("lab/live", 2, false, b"at 2").await?;
    let at_0 = subscriber.expect_message("lab/live", b"at 0").await?;
    let at_2 = subscriber.expect_message("lab/live", b"at 2").await?;
    assert_eq!((at_0.qos, at_2.qos), (0, 1));
    Ok(())
}

both_versions!(delivered_qos_is_the_lower_of_message_and_subscription);

/// `mosquitto_pub -D publish message-expiry-interval`: an expired message is never delivered,
/// one that waited is delivered with what remains of its interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_counts_down_and_expired_messages_are_dropped() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let subscriber_cert = pki.client("subscriber", LAB)?;
    let mut subscriber = broker
        .client(&subscriber_cert)
        .v5()
        .clean_session(false)
        .connect()
        .await?;
    subscriber
        .subscribe_and_wait(&[("lab/expiring", 1)])
        .await?;
    subscriber.disconnect().await?;

    let publisher = pki.client("publisher", LAB)?;
    for (payload, interval) in [("short", "1"), ("long", "3600")] {
        broker
            .mosquitto_pub(&publisher)
            .v5()
            .topic("lab/expiring")
            .message(payload)
            .args(&["-D", "publish", "message-expiry-interval", interval])
            .run_acked()
            .await?;
    }
    // Long enough for the short one to expire while the subscriber is away.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut subscriber = broker
        .client(&subscriber_cert)
        .v5()
        .clean_session(false)
        .start()?;
    assert!(subscriber.expect_connack().await?, "session present");
    let long = subscriber.expect_message("lab/expiring", b"long").await?;
    let left = long
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .context("the message expiry interval is forwarded")?;
    assert!(
        (3000..=3598).contains(&left),
        "3600 s minus the time waited, got {left}"
    );
    // "short" was published first: had it been delivered, it would have come before "long".
    assert_eq!(subscriber.messages_on("lab/expiring"), [long]);
    Ok(())
}

/// A session outlives its connection for its expiry interval: 0 not at all, 3600 s across a
/// reconnection (with what was published meanwhile), 1 s not after 2 s; a clean start ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lasts_its_expiry_interval() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let cert = pki.client("subscriber", LAB)?;
    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .v5()
        .connect()
        .await?;
    let connect = |clean_start: bool, expiry: u32| {
        broker
            .client(&cert)
            .clean_session(clean_start)
            .v5_with(move |options| {
                options.set_session_expiry_interval(Some(expiry));
            })
    };

    for (expiry, wait, present) in [
        (0, Duration::ZERO, false),
        (3600, Duration::ZERO, true),
        (1, Duration::from_secs(2), false),
    ] {
        let mut client = connect(true, expiry).connect().await?;
        client.subscribe_and_wait(&[("lab/session", 1)]).await?;
        client.disconnect().await?;
        let payload = format!("while away, expiry {expiry}");
        publisher
            .publish_acked("lab/session", false, payload.as_bytes())
            .await?;
        tokio::time::sleep(wait).await;

        let mut client = connect(false, 3600).start()?;
        assert_eq!(
            client.expect_connack().await?,
            present,
            "session present after a disconnect with session expiry {expiry}"
        );
        if present {
            client
                .expect_message("lab/session", payload.as_bytes())
                .await?;
        }
        client.disconnect().await?;
    }

    // A clean start discards the session kept for 3600 s.
    let mut client = connect(true, 3600).start()?;
    assert!(!client.expect_connack().await?, "clean start");
    Ok(())
}

/// A will is published with its properties: user properties, content type, response topic,
/// correlation data, payload format and message expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_keeps_its_properties() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut subscriber = broker
        .client(&pki.client("subscriber", LAB)?)
        .v5()
        .connect()
        .await?;
    subscriber.subscribe_and_wait(&[("lab/will", 1)]).await?;

    let properties = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("text/plain".to_owned()),
        response_topic: Some("lab/answer".to_owned()),
        correlation_data: Some(Bytes::from_static(b"c-7")),
        user_properties: vec![
            ("a".to_owned(), "2".to_owned()),
            ("c".to_owned(), "3".to_owned()),
        ],
    };
    let dying = broker
        .client(&pki.client("dying", LAB)?)
        .v5_with(move |options| {
            options.set_last_will(LastWill::new(
                "lab/will",
                "gone",
                QoS::AtLeastOnce,
                false,
                Some(properties),
            ));
        })
        .connect()
        .await?;
    dying.kill().await;

    let will = subscriber.expect_message("lab/will", b"gone").await?;
    assert_eq!(will.qos, 1);
    let got = will.properties.context("the will has properties")?;
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("lab/answer"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"c-7"[..]));
    assert_eq!(
        got.user_properties,
        [
            ("a".to_owned(), "2".to_owned()),
            ("c".to_owned(), "3".to_owned())
        ]
    );
    assert!(got
        .message_expiry_interval
        .is_some_and(|left| (3590..=3600).contains(&left)));
    Ok(())
}

/// A taxi that sets a will delay does not show offline on a short loss of network: its will
/// and the broker's offline status wait for the delay, and come only if it stays away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_delay_holds_the_will_and_the_offline_status() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .v5()
        .connect()
        .await?;
    operator
        .subscribe_and_wait(&[("taxi/taxi-1/status", 1)])
        .await?;
    let taxi_cert = pki.client("taxi-1", "taxi")?;
    let delay = Duration::from_secs(2);
    // The will's at_ms tells it from the broker's own status.
    let will_payload = br#"{"state":"offline","at_ms":1}"#;
    let taxi = |clean_start: bool| {
        broker
            .client(&taxi_cert)
            .clean_session(clean_start)
            .v5_with(move |options| {
                options.set_session_expiry_interval(Some(60));
                options.set_last_will(LastWill::new(
                    "taxi/taxi-1/status",
                    &will_payload[..],
                    QoS::AtLeastOnce,
                    true,
                    Some(LastWillProperties {
                        delay_interval: Some(delay.as_secs() as u32),
                        payload_format_indicator: None,
                        message_expiry_interval: None,
                        content_type: None,
                        response_topic: None,
                        correlation_data: None,
                        user_properties: Vec::new(),
                    }),
                ));
            })
    };

    // A short gap: back before the delay is over, then gone for good with a DISCONNECT.
    let first = taxi(true).connect().await?;
    operator.expect_publish("taxi/taxi-1/status").await?;
    first.kill().await;
    let mut back = taxi(false).start()?;
    assert!(back.expect_connack().await?, "the session was kept");
    let online = operator.expect_publish("taxi/taxi-1/status").await?;
    assert_eq!(status_state(&online.payload)?, "online");
    back.disconnect().await?;
    let offline = operator.expect_publish("taxi/taxi-1/status").await?;
    assert_eq!(status_state(&offline.payload)?, "offline");
    tokio::time::sleep(delay + Duration::from_secs(1)).await;
    let wills: Vec<_> = operator
        .messages_on("taxi/taxi-1/status")
        .into_iter()
        .filter(|m| m.payload == will_payload)
        .collect();
    assert!(wills.is_empty(), "the cancelled will came: {wills:?}");

    // Gone for good: the will and the offline status, not before the delay.
    let lost = taxi(false).connect().await?;
    operator.expect_publish("taxi/taxi-1/status").await?;
    let lost_at = Instant::now();
    lost.kill().await;
    operator
        .expect_message("taxi/taxi-1/status", will_payload)
        .await?;
    let offline = operator.expect_publish("taxi/taxi-1/status").await?;
    assert_eq!(status_state(&offline.payload)?, "offline");
    assert!(
        lost_at.elapsed() >= delay,
        "the will came {:?} after the connection was lost, before its delay",
        lost_at.elapsed()
    );
    Ok(())
}

/// User properties, payload format indicator, content type, response topic and correlation
/// data reach subscribers unchanged (rumqttc, and `mosquitto_pub -D` to `mosquitto_sub -F`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_reach_subscribers_unchanged() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let subscriber_cert = pki.client("subscriber", LAB)?;
    let mut subscriber = broker.client(&subscriber_cert).v5().connect().await?;
    subscriber.subscribe_and_wait(&[("lab/props", 2)]).await?;
    let mut watcher = broker
        .mosquitto_sub(&pki.client("watcher", LAB)?)
        .v5()
        .topic("lab/props")
        .args(&["-F", "%t %P|%C|%R|%F|%p"])
        .spawn()?;
    watcher.expect_subscribed().await?;

    let publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .v5()
        .connect()
        .await?;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".to_owned()),
        response_topic: Some("lab/reply".to_owned()),
        correlation_data: Some(Bytes::from_static(b"request-1")),
        user_properties: vec![
            ("trip".to_owned(), "42".to_owned()),
            ("trip".to_owned(), "43".to_owned()),
        ],
        ..Default::default()
    };
    for qos in [0, 1, 2] {
        let payload = format!("{{\"qos\":{qos}}}");
        publisher
            .publish_v5(
                "lab/props",
                qos,
                false,
                payload.as_bytes(),
                properties.clone(),
            )
            .await?;
        let message = subscriber
            .expect_message("lab/props", payload.as_bytes())
            .await?;
        assert_eq!(message.properties.as_ref(), Some(&properties), "QoS {qos}");
        let line = watcher.expect_message("lab/props").await?;
        assert_eq!(
            line,
            format!("trip:42 trip:43|application/json|lab/reply|1|{payload}")
        );
    }

    broker
        .mosquitto_pub(&pki.client("mosquitto", LAB)?)
        .v5()
        .topic("lab/props")
        .message("from mosquitto")
        .args(&["-D", "publish", "user-property", "shift", "night"])
        .args(&["-D", "publish", "content-type", "text/plain"])
        .run_acked()
        .await?;
    let message = subscriber
        .expect_message("lab/props", b"from mosquitto")
        .await?;
    let got = message.properties.context("properties")?;
    assert_eq!(
        got.user_properties,
        [("shift".to_owned(), "night".to_owned())]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    Ok(())
}

/// No local: a client does not get back what it publishes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_subscriptions_skip_the_clients_own_messages() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut a = broker.client(&pki.client("a", LAB)?).v5().connect().await?;
    let mut b = broker.client(&pki.client("b", LAB)?).v5().connect().await?;
    let mut own = filter("lab/chat", QoS::AtLeastOnce);
    own.nolocal = true;
    a.subscribe_v5(vec![own], None).await?;
    b.subscribe_and_wait(&[("lab/chat", 1)]).await?;

    a.publish_acked("lab/chat", false, b"from a").await?;
    b.expect_message("lab/chat", b"from a").await?;
    b.publish_acked("lab/chat", false, b"from b").await?;
    let got = a.expect_publish("lab/chat").await?;
    // Its own message, published first, would have come first.
    assert_eq!(got.payload, b"from b");
    Ok(())
}

/// Retain as published keeps the retain flag of live messages (`mosquitto_sub
/// --retain-as-published`); other subscriptions get it cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_the_retain_flag() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut keeps = broker
        .mosquitto_sub(&pki.client("keeps", LAB)?)
        .v5()
        .topic("lab/rap")
        .args(&["--retain-as-published", "-F", "%t %r %p"])
        .spawn()?;
    keeps.expect_subscribed().await?;
    let mut clears = broker
        .client(&pki.client("clears", LAB)?)
        .v5()
        .connect()
        .await?;
    clears.subscribe_and_wait(&[("lab/rap", 1)]).await?;

    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .v5()
        .connect()
        .await?;
    publisher
        .publish_acked("lab/rap", false, b"not retained")
        .await?;
    publisher
        .publish_acked("lab/rap", true, b"retained")
        .await?;
    keeps
        .expect_message_payload("lab/rap", "0 not retained")
        .await?;
    keeps
        .expect_message_payload("lab/rap", "1 retained")
        .await?;
    let cleared = clears.expect_message("lab/rap", b"retained").await?;
    assert!(!cleared.retain);
    Ok(())
}

/// Retain handling: 0 sends the retained messages at every subscribe (a subscribe again
/// included), 1 only for a new subscription, 2 never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_decides_when_retained_messages_come() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .v5()
        .connect()
        .await?;
    publisher
        .publish_acked("lab/retained", true, b"retained")
        .await?;

    for (rule, first, again) in [
        (RetainForwardRule::OnEverySubscribe, true, true),
        (RetainForwardRule::OnNewSubscribe, true, false),
        (RetainForwardRule::Never, false, false),
    ] {
        let mut client = broker
            .client(&pki.client("subscriber", LAB)?)
            .v5()
            .connect()
            .await?;
        let mut retained_so_far = 0;
        for (round, expected) in [("new", first), ("again", again)] {
            let mut f = filter("lab/retained", QoS::AtLeastOnce);
            f.retain_forward_rule = rule.clone();
            client.subscribe_v5(vec![f], None).await?;
            // A live message after the subscription: a retained one would come before it.
            let marker = format!("{rule:?} {round}");
            publisher
                .publish_acked("lab/retained", false, marker.as_bytes())
                .await?;
            client
                .expect_message("lab/retained", marker.as_bytes())
                .await?;
            retained_so_far += usize::from(expected);
            let retained = client
                .messages_on("lab/retained")
                .iter()
                .filter(|m| m.payload == b"retained")
                .count();
            assert_eq!(retained, retained_so_far, "{rule:?}, {round} subscription");
        }
        client.disconnect().await?;
    }
    Ok(())
}

/// A message matching two subscriptions of a client comes once, with both subscription
/// identifiers and the higher QoS; `mosquitto_sub -D subscribe subscription-identifier`
/// prints its identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_come_with_the_messages() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut client = broker
        .client(&pki.client("subscriber", LAB)?)
        .v5()
        .connect()
        .await?;
    client
        .subscribe_v5(vec![filter("lab/ids/a", QoS::AtMostOnce)], Some(2))
        .await?;
    client
        .subscribe_v5(vec![filter("lab/ids/#", QoS::AtLeastOnce)], Some(3))
        .await?;
    let mut watcher = broker
        .mosquitto_sub(&pki.client("watcher", LAB)?)
        .v5()
        .topic("lab/ids/#")
        .args(&[
            "-D",
            "subscribe",
            "subscription-identifier",
            "7",
            "-F",
            "%t %S %p",
        ])
        .spawn()?;
    watcher.expect_subscribed().await?;

    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .v5()
        .connect()
        .await?;
    publisher.publish_acked("lab/ids/a", false, b"both").await?;
    publisher.publish_acked("lab/ids/b", false, b"one").await?;
    let both = client.expect_message("lab/ids/a", b"both").await?;
    let one = client.expect_message("lab/ids/b", b"one").await?;
    let mut ids = both
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort();
    assert_eq!(ids, [2, 3]);
    assert_eq!(both.qos, 1, "the higher QoS of the two subscriptions");
    assert_eq!(
        one.properties.map(|p| p.subscription_identifiers),
        Some(vec![3])
    );
    // "both" came once: "one", published after it, came next.
    assert_eq!(client.messages().len(), 2, "{:?}", client.messages());
    watcher
        .expect_message_payload("lab/ids/a", "7 both")
        .await?;
    Ok(())
}

/// A message larger than the client's Maximum Packet Size is not sent to it (and does not
/// hold up the messages after it); other subscribers get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_the_client_accepts_are_dropped_for_it() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut small = broker
        .client(&pki.client("small", LAB)?)
        .v5_with(|options| {
            options.set_max_packet_size(Some(256));
        })
        .connect()
        .await?;
    small.subscribe_and_wait(&[("lab/size", 1)]).await?;
    let mut large = broker
        .client(&pki.client("large", LAB)?)
        .v5()
        .connect()
        .await?;
    large.subscribe_and_wait(&[("lab/size", 1)]).await?;

    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .v5()
        .connect()
        .await?;
    let big = vec![b'x'; 1000];
    publisher.publish_acked("lab/size", false, &big).await?;
    publisher.publish_acked("lab/size", false, b"after").await?;
    large.expect_message("lab/size", &big).await?;
    small.expect_message("lab/size", b"after").await?;
    assert_eq!(small.messages_on("lab/size").len(), 1, "only the small one");
    Ok(())
}

/// Receive Maximum: no more QoS 1 messages in flight to a client than it said it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_limits_the_messages_in_flight() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let mut slow = broker
        .client(&pki.client("slow", LAB)?)
        .manual_acks()
        .v5_with(|options| {
            options.set_receive_maximum(Some(2));
        })
        .connect()
        .await?;
    slow.subscribe_and_wait(&[("lab/flow", 1)]).await?;
    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .v5()
        .connect()
        .await?;
    for n in 1..=3 {
        publisher
            .publish_acked("lab/flow", false, format!("m{n}").as_bytes())
            .await?;
    }
    let first = slow.expect_message("lab/flow", b"m1").await?;
    slow.expect_message("lab/flow", b"m2").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slow.messages_on("lab/flow").len(),
        2,
        "two in flight at most"
    );
    slow.ack(&first).await?;
    slow.expect_message("lab/flow", b"m3").await?;
    Ok(())
}

/// The broker's Receive Maximum (`mqtt.receive_maximum`) is announced in the CONNACK; a client
/// with more QoS 1 and 2 publishes unacknowledged than that is disconnected with 0x93.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_the_brokers_receive_maximum_is_disconnected() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker_with(&pki, |config| config.mqtt.receive_maximum = 2).await?;
    let cert = pki.client("client", LAB)?;
    let mut client = broker.client(&cert).v5().start()?;
    let (_, properties) = client.expect_connack_v5().await?;
    assert_eq!(properties.and_then(|p| p.receive_max), Some(2));
    client.disconnect().await?;

    // QoS 2 publishes whose exchanges the client never completes (no PUBREL).
    let mut raw = broker.raw(&cert).await?;
    let mut burst = raw::connect_v5("client", true, 30);
    for pkid in 1..=3 {
        burst.extend(raw::publish_v5("lab/flow", b"x", 2, pkid));
    }
    raw.send(&burst).await?;
    let answers = raw.read_until_closed(WAIT).await?;
    let last = answers.last().context("no answer")?;
    assert_eq!(
        (last.kind, last.body.first()),
        (raw::DISCONNECT, Some(&0x93)),
        "DISCONNECT 'receive maximum exceeded': {answers:?}"
    );
    Ok(())
}

/// `mqtt.max_keep_alive_s`: an MQTT 5 client asking for more is told the cap (Server Keep
/// Alive); an MQTT 3.1.1 client asking for more is refused (it cannot be told).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_cap_is_announced_or_enforced() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker_with(&pki, |config| config.mqtt.max_keep_alive_s = 60).await?;
    let cert = pki.client("client", LAB)?;
    let mut v5 = broker
        .client(&cert)
        .keep_alive(Duration::from_secs(120))
        .v5()
        .start()?;
    let (_, properties) = v5.expect_connack_v5().await?;
    assert_eq!(properties.and_then(|p| p.server_keep_alive), Some(60));
    v5.disconnect().await?;

    let mut within = broker
        .client(&cert)
        .keep_alive(Duration::from_secs(30))
        .v5()
        .start()?;
    let (_, properties) = within.expect_connack_v5().await?;
    assert_eq!(properties.and_then(|p| p.server_keep_alive), None);
    within.disconnect().await?;

    let mut v311 = broker
        .client(&cert)
        .keep_alive(Duration::from_secs(120))
        .start()?;
    assert_eq!(v311.expect_refused().await?, Some(0x02));
    Ok(())
}

/// A topic alias is resolved by the broker and the resolved topic authorized: a taxi may use
/// an alias for its own position, and an alias never lets it publish elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_are_resolved_and_authorized() -> Result<()> {
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator
        .subscribe_and_wait(&[("taxi/+/position", 1)])
        .await?;
    let mut taxi = broker
        .client(&pki.client("taxi-1", "taxi")?)
        .v5()
        .connect()
        .await?;
    let alias = |n| PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    };
    let (first, second) = (position_json(1), position_json(2));
    taxi.publish_v5("taxi/taxi-1/position", 1, false, &first, alias(1))
        .await?;
    taxi.publish_v5("", 1, false, &second, alias(1)).await?;
    operator
        .expect_message("taxi/taxi-1/position", &first)
        .await?;
    operator
        .expect_message("taxi/taxi-1/position", &second)
        .await?;

    // Setting an alias to another taxi's topic is a publish there: refused.
    taxi.publish_v5(
        "taxi/taxi-2/position",
        1,
        false,
        &position_json(3),
        alias(2),
    )
    .await?;
    let closed = taxi.expect_disconnected().await?;
    assert_eq!(
        closed.disconnect_reason,
        Some(tests::DISCONNECT_NOT_AUTHORIZED_V5)
    );
    assert_nothing_more(&mut operator, "taxi/taxi-2/position").await
}

/// QoS 2 end to end, live and for a persistent session that was away: each message arrives
/// once, at QoS 2.
async fn qos_2_is_delivered_exactly_once(version: Version) -> Result<()> {
    let pki = TestPki::new()?;
    let broker = lab_broker(&pki).await?;
    let cert = pki.client("subscriber", LAB)?;
    let mut subscriber = broker
        .client(&cert)
        .version(version)
        .clean_session(false)
        .connect()
        .await?;
    subscriber.subscribe_and_wait(&[("lab/q2", 2)]).await?;
    let mut publisher = broker
        .client(&pki.client("publisher", LAB)?)
        .version(version)
        .connect()
        .await?;
    publisher
        .publish_completed("lab/q2", false, b"live")
        .await?;
    let live = subscriber.expect_message("lab/q2", b"live").await?;
    assert_eq!(live.qos, 2);
    // A message after it: by then the client has had the PUBREL and sent its PUBCOMP.
    publisher
        .publish_acked("lab/q2", false, b"after live")
        .await?;
    subscriber.expect_message("lab/q2", b"after live").await?;
    subscriber.disconnect().await?;

    publisher
        .publish_completed("lab/q2", false, b"while away")
        .await?;
    publisher.publish_acked("lab/q2", false, b"marker").await?;
    let mut subscriber = broker
        .client(&cert)
        .version(version)
        .clean_session(false)
        .start()?;
    assert!(subscriber.expect_connack().await?);
    let away = subscriber.expect_message("lab/q2", b"while away").await?;
    assert_eq!(away.qos, 2);
    subscriber.expect_message("lab/q2", b"marker").await?;
    assert_eq!(
        subscriber.messages_on("lab/q2").len(),
        2,
        "once each: {:?}",
        subscriber.messages()
    );
    Ok(())
}

both_versions!(qos_2_is_delivered_exactly_once);
