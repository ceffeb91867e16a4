//! The simulated taxis against the real broker, seen from the backoffice: an inbox message
//! reaches exactly the taxi it is for, which answers `received` and then `accepted` or
//! `rejected`; a repeated order is answered again but shown once; an order that expires
//! before the driver decides is rejected as `expired`; an accepted order becomes a tour that
//! starts and ends with a meter reading; a taxi that was offline answers what was sent
//! meanwhile (its persistent session kept it).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use simulator::taxi::{Behaviour, Counters, SimulatedTaxi, TaxiSpec};
use tests::{status_state, unix_ms, Event, MqttClient, TestBroker, TestPki, WAIT};
use wire::{Ack, AckState, TourEvent, TourEventKind};

/// A simulated taxi and its counters.
struct Taxi {
    taxi: SimulatedTaxi,
    counters: Arc<Counters>,
}

/// A taxi that reports five positions a second, decides after `decide_ms`, accepts orders
/// with probability `accept_share`, never hails, never loses its connection, and starts a
/// tour (of `tour_ms`) `pickup_ms` after accepting an order.
fn behaviour(accept_share: f64, decide_ms: u64, pickup_ms: u64, tour_ms: u64) -> Behaviour {
    let ms = Duration::from_millis;
    Behaviour {
        rate: 5.0,
        decide_after: ms(decide_ms)..=ms(decide_ms),
        accept_share,
        pickup_after: ms(pickup_ms)..=ms(pickup_ms),
        tour_length: ms(tour_ms)..=ms(tour_ms),
        hail_every: None,
        offline_every: None,
        ..Behaviour::default()
    }
}

/// Orders are accepted (or declined) after 200 ms, and no tour starts within a test.
fn answering(accept_share: f64) -> Behaviour {
    behaviour(accept_share, 200, 3_600_000, 60_000)
}

/// Starts a simulated taxi with its own certificate and waits until it listens.
async fn start_taxi(
    broker: &TestBroker,
    pki: &TestPki,
    id: &str,
    behaviour: Behaviour,
) -> Result<Taxi> {
    let cert = pki.client(id, "taxi")?;
    let client = simulator::pki::Client::from_pem(
        id,
        pki.ca_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )?;
    let counters = Arc::new(Counters::default());
    let spec = TaxiSpec {
        client,
        host: broker.mqtt_addr.ip().to_string(),
        port: broker.mqtt_addr.port(),
        behaviour,
        seed: id.len() as u64,
    };
    let mut taxi = SimulatedTaxi::spawn(spec, counters.clone(), None);
    taxi.wait_listening(WAIT).await?;
    Ok(Taxi { taxi, counters })
}

/// The backoffice, watching every taxi's answers and status.
async fn backoffice(broker: &TestBroker, pki: &TestPki) -> Result<MqttClient> {
    let mut client = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;
    client
        .subscribe_and_wait(&[("taxi/+/ack", 1), ("taxi/+/status", 1)])
        .await?;
    Ok(client)
}

/// An inbox message as JSON.
fn order(order_id: &str, kind: &str, expires_ms: Option<i64>) -> Vec<u8> {
    serde_json::json!({
        "order_id": order_id,
        "kind": kind,
        "text": "Pick up at Alexanderplatz 1",
        "created_ms": unix_ms(),
        "expires_ms": expires_ms,
    })
    .to_string()
    .into_bytes()
}

/// Waits for an answer to `order_id` in `state`; returns the topic it came on and the ack.
async fn expect_answer(
    backoffice: &mut MqttClient,
    order_id: &str,
    state: AckState,
) -> Result<(String, Ack)> {
    backoffice
        .expect(
            &format!("{state:?} answer to {order_id}"),
            WAIT,
            |event| match event {
                Event::Publish(message) if message.topic.ends_with("/ack") => {
                    let ack = wire::decode::<Ack>(&message.payload).ok()?;
                    (ack.order_id == order_id && ack.state == state)
                        .then(|| (message.topic.clone(), ack))
                }
                _ => None,
            },
        )
        .await
}

/// Every answer to `order_id` seen so far: (topic, state, reason).
fn answers_to(
    backoffice: &mut MqttClient,
    order_id: &str,
) -> Vec<(String, AckState, Option<String>)> {
    backoffice
        .messages()
        .into_iter()
        .filter(|message| message.topic.ends_with("/ack"))
        .filter_map(|message| {
            let ack = wire::decode::<Ack>(&message.payload).ok()?;
            (ack.order_id == order_id).then_some((message.topic, ack.state, ack.reason))
        })
        .collect()
}

#[tokio::test]
async fn an_order_reaches_exactly_its_taxi_which_answers_received_then_accepted() -> Result<()> {
    tests::init();
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut taxis = Vec::new();
    for id in ["taxi-1", "taxi-2", "taxi-3"] {
        taxis.push(start_taxi(&broker, &pki, id, answering(1.0)).await?);
    }
    let mut backoffice = backoffice(&broker, &pki).await?;

    backoffice
        .publish("taxi/taxi-2/inbox", 1, false, &order("o-1", "order", None))
        .await?;
    let (topic, received) = expect_answer(&mut backoffice, "o-1", AckState::Received).await?;
    assert_eq!(topic, "taxi/taxi-2/ack");
    let (topic, accepted) = expect_answer(&mut backoffice, "o-1", AckState::Accepted).await?;
    assert_eq!(topic, "taxi/taxi-2/ack");
    assert!(
        accepted.seq > received.seq,
        "{received:?} then {accepted:?}"
    );
    assert!(accepted.ts_ms >= received.ts_ms);

    // A later message to each of the others: once they have answered it, they would have
    // answered o-1 too had it reached them.
    for (n, id) in [(1, "taxi-1"), (3, "taxi-3")] {
        let marker = format!("marker-{n}");
        backoffice
            .publish(
                &format!("taxi/{id}/inbox"),
                1,
                false,
                &order(&marker, "message", None),
            )
            .await?;
        let (topic, _) = expect_answer(&mut backoffice, &marker, AckState::Accepted).await?;
        assert_eq!(topic, format!("taxi/{id}/ack"));
    }
    let answers = answers_to(&mut backoffice, "o-1");
    assert_eq!(
        answers,
        [
            ("taxi/taxi-2/ack".to_owned(), AckState::Received, None),
            ("taxi/taxi-2/ack".to_owned(), AckState::Accepted, None),
        ],
        "only taxi-2 answered o-1, once each"
    );
    let inbox_new: Vec<u64> = taxis
        .iter()
        .map(|taxi| Counters::get(&taxi.counters.inbox_new))
        .collect();
    assert_eq!(inbox_new, [1, 1, 1], "o-1 and one marker each");
    for taxi in taxis {
        taxi.taxi.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn an_order_from_mosquitto_pub_is_declined_by_a_driver_who_does_not_want_it() -> Result<()> {
    tests::init();
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let taxi = start_taxi(&broker, &pki, "taxi-7", answering(0.0)).await?;
    let mut backoffice = backoffice(&broker, &pki).await?;

    // A second backoffice application, with a certificate of its own.
    broker
        .mosquitto_pub(&pki.client("dispatcher", "backoffice")?)
        .topic("taxi/taxi-7/inbox")
        .message(&String::from_utf8(order("o-2", "order", None))?)
        .run_acked()
        .await?;
    expect_answer(&mut backoffice, "o-2", AckState::Received).await?;
    let (topic, rejected) = expect_answer(&mut backoffice, "o-2", AckState::Rejected).await?;
    assert_eq!(topic, "taxi/taxi-7/ack");
    assert_eq!(rejected.reason.as_deref(), Some(simulator::taxi::DECLINED));
    taxi.taxi.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_repeated_order_is_answered_again_with_its_state_and_shown_once() -> Result<()> {
    tests::init();
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let taxi = start_taxi(&broker, &pki, "taxi-4", answering(1.0)).await?;
    let mut backoffice = backoffice(&broker, &pki).await?;

    let payload = order("o-3", "order", None);
    backoffice
        .publish("taxi/taxi-4/inbox", 1, false, &payload)
        .await?;
    expect_answer(&mut backoffice, "o-3", AckState::Accepted).await?;
    // The same order again (a resend after a lost answer): answered with its state.
    backoffice
        .publish("taxi/taxi-4/inbox", 1, false, &payload)
        .await?;
    expect_answer(&mut backoffice, "o-3", AckState::Accepted).await?;
    let states: Vec<AckState> = answers_to(&mut backoffice, "o-3")
        .into_iter()
        .map(|(_, state, _)| state)
        .collect();
    assert_eq!(
        states,
        [AckState::Received, AckState::Accepted, AckState::Accepted]
    );
    assert_eq!(Counters::get(&taxi.counters.inbox_new), 1, "shown once");
    assert_eq!(Counters::get(&taxi.counters.inbox_repeats), 1);
    assert_eq!(Counters::get(&taxi.counters.accepted), 1);
    taxi.taxi.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_order_that_expires_before_the_driver_decides_is_rejected_as_expired() -> Result<()> {
    tests::init();
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    // The driver takes four seconds; the order is void after two and a half (the broker
    // may drop an order up to a second before its expiry, so it gets more than that).
    let taxi = start_taxi(
        &broker,
        &pki,
        "taxi-5",
        behaviour(1.0, 4_000, 3_600_000, 60_000),
    )
    .await?;
    let mut backoffice = backoffice(&broker, &pki).await?;

    let expires_ms = unix_ms() + 2_500;
    backoffice
        .publish(
            "taxi/taxi-5/inbox",
            1,
            false,
            &order("o-4", "order", Some(expires_ms)),
        )
        .await?;
    let (_, received) = expect_answer(&mut backoffice, "o-4", AckState::Received).await?;
    assert!(
        received.ts_ms < expires_ms,
        "received before it expired: {received:?}"
    );
    let (topic, rejected) = expect_answer(&mut backoffice, "o-4", AckState::Rejected).await?;
    assert_eq!(topic, "taxi/taxi-5/ack");
    assert_eq!(rejected.reason.as_deref(), Some("expired"));
    assert!(rejected.ts_ms >= expires_ms, "{rejected:?}");
    assert!(
        answers_to(&mut backoffice, "o-4")
            .iter()
            .all(|(_, state, _)| *state != AckState::Accepted),
        "never accepted"
    );
    taxi.taxi.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_accepted_order_becomes_a_tour_that_starts_and_ends_with_a_meter_reading() -> Result<()>
{
    tests::init();
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let taxi = start_taxi(&broker, &pki, "taxi-6", behaviour(1.0, 100, 300, 2_000)).await?;
    let mut operator = broker
        .client(&pki.client("operator", "operator")?)
        .connect()
        .await?;
    operator
        .subscribe_and_wait(&[("taxi/+/tour", 1), ("taxi/+/ack", 1)])
        .await?;
    let backoffice = broker
        .client(&pki.client("backoffice", "backoffice")?)
        .connect()
        .await?;
    backoffice
        .publish("taxi/taxi-6/inbox", 1, false, &order("o-5", "order", None))
        .await?;
    expect_answer(&mut operator, "o-5", AckState::Accepted).await?;

    let tour_event = |kind: TourEventKind| {
        move |event: &Event| match event {
            Event::Publish(message) if message.topic == "taxi/taxi-6/tour" => {
                wire::decode::<TourEvent>(&message.payload)
                    .ok()
                    .filter(|tour| tour.kind == kind)
            }
            _ => None,
        }
    };
    let started = operator
        .expect("tour started", WAIT, tour_event(TourEventKind::Started))
        .await?;
    let ended = operator
        .expect("tour ended", WAIT, tour_event(TourEventKind::Ended))
        .await?;
    assert_eq!(started.tour_id, ended.tour_id);
    assert!(started.tour_id.starts_with("taxi-6-"), "{started:?}");
    assert!(ended.seq > started.seq);
    assert!(
        ended.ts_ms - started.ts_ms >= 2_000,
        "{started:?} {ended:?}"
    );
    let (start_meter, end_meter) = (
        started.meter_cents.context("meter at start")?,
        ended.meter_cents.context("meter at end")?,
    );
    assert!(
        start_meter > 0 && end_meter >= start_meter,
        "{start_meter} {end_meter}"
    );
    assert_eq!(Counters::get(&taxi.counters.tours_ended), 1);
    taxi.taxi.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_taxi_back_from_offline_answers_the_order_sent_meanwhile() -> Result<()> {
    tests::init();
    let pki = TestPki::new()?;
    let broker = TestBroker::start(&pki).await?;
    let mut backoffice = backoffice(&broker, &pki).await?;
    let taxi = start_taxi(&broker, &pki, "taxi-8", answering(1.0)).await?;

    let status = |state: &'static str| {
        move |event: &Event| match event {
            Event::Publish(message)
                if message.topic == "taxi/taxi-8/status"
                    && status_state(&message.payload).ok().as_deref() == Some(state) =>
            {
                Some(())
            }
            _ => None,
        }
    };
    backoffice
        .expect("taxi-8 online", WAIT, status("online"))
        .await?;
    taxi.taxi.go_offline(Duration::from_secs(2));
    backoffice
        .expect("taxi-8 offline", WAIT, status("offline"))
        .await?;
    backoffice
        .publish("taxi/taxi-8/inbox", 1, false, &order("o-6", "order", None))
        .await?;
    backoffice
        .expect("taxi-8 online again", WAIT, status("online"))
        .await?;
    let (topic, _) = expect_answer(&mut backoffice, "o-6", AckState::Received).await?;
    assert_eq!(topic, "taxi/taxi-8/ack");
    expect_answer(&mut backoffice, "o-6", AckState::Accepted).await?;
    assert_eq!(Counters::get(&taxi.counters.offline), 1);
    assert_eq!(Counters::get(&taxi.counters.inbox_new), 1);
    taxi.taxi.stop().await;
    Ok(())
}
