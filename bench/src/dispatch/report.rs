//! The `bench dispatch` report: the configuration, a table (metric | value | baseline |
//! ratio) with each way in measured against its baseline, the product's target, what
//! PostgreSQL recorded, and the errors.

use std::fmt::Write as _;

use super::{DispatchArgs, DispatchPhase, DispatchResults, PhaseResult};
use crate::ingest::report::{table, thousands, Row};
use simulator::measure::LatencySummary;

/// Largest p99 from an API call to the taxi having the order the product accepts, in ms.
pub const TARGET_P99_MS: f64 = 20.0;

/// The whole report as text.
pub fn render(args: &DispatchArgs, results: &DispatchResults) -> String {
    let mut out = String::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let defaults = bridge::Config::default();
    let _ = writeln!(out, "\nConfiguration");
    let lines = [
        (
            "taxis",
            format!(
                "{} simulated taxis over mTLS, persistent sessions, {} positions/s each ({} in \
                 all), answering every order (received, accepted)",
                args.taxis,
                args.position_rate,
                thousands(args.position_rate * args.taxis as f64)
            ),
        ),
        (
            "orders",
            format!(
                "{} orders/s to random taxis for {} s per latency phase; throughput: {} API \
                 connections back to back for {} s",
                args.order_rate, args.seconds, args.concurrency, args.throughput_seconds
            ),
        ),
        (
            "direct",
            "a backoffice application (its own certificate, MQTT 3.1.1) publishes QoS 1 to \
             taxi/<id>/inbox"
                .to_owned(),
        ),
        (
            "api",
            "POST /v1/orders with a bearer token, keep-alive HTTP/1.1, 4 connections when paced"
                .to_owned(),
        ),
        (
            "platform",
            format!(
                "our broker (child process), the bridge in process (mqtt.connections = {}, \
                 dispatch and its API on), a private PostgreSQL (fsync on)",
                defaults.mqtt.connections
            ),
        ),
        (
            "baseline",
            "Mosquitto with the same certificates and rules, the same taxis and publishes \
             (no bridge, nothing recorded)"
                .to_owned(),
        ),
        (
            "latency",
            "from just before the publish or the request to the taxi's client handing the \
             order over, one clock"
                .to_owned(),
        ),
        (
            "machine",
            format!("{cpus} CPUs shared by everything above; loopback only"),
        ),
    ];
    for (name, value) in lines {
        let _ = writeln!(out, "  {name:<10} {value}");
    }

    let ok = |result: &Option<Result<PhaseResult, String>>| {
        result.as_ref().and_then(|r| r.as_ref().ok()).cloned()
    };
    let (mosquitto, mqtt, api, throughput) = (
        ok(&results.mosquitto),
        ok(&results.mqtt),
        ok(&results.api),
        ok(&results.throughput),
    );
    let mut rows = Vec::new();
    let ms = |us: u64| us as f64 / 1000.0;
    let quantiles = |summary: &LatencySummary| {
        [
            ("p50", ms(summary.p50_us)),
            ("p99", ms(summary.p99_us)),
            ("max", ms(summary.max_us)),
        ]
    };
    if let Some(mqtt) = &mqtt {
        for (index, (name, value)) in quantiles(&mqtt.delivery.latency).into_iter().enumerate() {
            let row = Row::new(
                format!("direct MQTT -> taxi {name} (ms)"),
                format!("{value:.2}"),
            );
            rows.push(match &mosquitto {
                Some(base) => {
                    let base_value = quantiles(&base.delivery.latency)[index].1;
                    row.against(value, base_value, format!("{base_value:.2} Mosquitto"))
                }
                None => row,
            });
        }
    } else if let Some(base) = &mosquitto {
        for (name, value) in quantiles(&base.delivery.latency) {
            rows.push(
                Row::new(format!("direct MQTT -> taxi {name} (ms)"), "-")
                    .baseline(format!("{value:.2} Mosquitto")),
            );
        }
    }
    if let Some(api) = &api {
        for (index, (name, value)) in quantiles(&api.delivery.latency).into_iter().enumerate() {
            let row = Row::new(
                format!("API call -> taxi {name} (ms)"),
                format!("{value:.2}"),
            );
            rows.push(match &mqtt {
                Some(direct) => {
                    let base_value = quantiles(&direct.delivery.latency)[index].1;
                    row.against(value, base_value, format!("{base_value:.2} direct"))
                }
                None => row,
            });
        }
        if let Some(answer) = &api.sent.answer {
            rows.push(Row::new(
                "API answer p50 / p99 (ms)",
                format!("{:.2} / {:.2}", ms(answer.p50_us), ms(answer.p99_us)),
            ));
        }
    }
    if let Some(throughput) = &throughput {
        let base = api.as_ref().map(|api| api.sent.accepted_per_s());
        let row = Row::new(
            format!("API orders accepted/s ({} connections)", args.concurrency),
            thousands(throughput.sent.accepted_per_s()),
        );
        rows.push(match base {
            Some(paced) => row.against(
                throughput.sent.accepted_per_s(),
                paced,
                format!("{} paced", thousands(paced)),
            ),
            None => row,
        });
        if let Some(answer) = &throughput.sent.answer {
            rows.push(Row::new(
                "  API answer p50 / p99 (ms)",
                format!("{:.2} / {:.2}", ms(answer.p50_us), ms(answer.p99_us)),
            ));
        }
        let latency = &throughput.delivery.latency;
        rows.push(Row::new(
            "  API call -> taxi p50 / p99 (ms)",
            format!("{:.2} / {:.2}", ms(latency.p50_us), ms(latency.p99_us)),
        ));
    }
    let phases = [
        ("mosquitto", DispatchPhase::Mosquitto, &mosquitto),
        ("direct MQTT", DispatchPhase::Mqtt, &mqtt),
        ("API", DispatchPhase::Api, &api),
        ("API flat out", DispatchPhase::ApiThroughput, &throughput),
    ];
    for (name, _, result) in phases.iter().filter(|(_, phase, _)| args.runs(*phase)) {
        if let Some(result) = result {
            let d = &result.delivery;
            rows.push(Row::new(
                format!("{name}: reached their taxi / sent"),
                format!("{} / {}", d.received, result.sent.sent),
            ));
            if d.missing() + d.wrong_taxi + d.repeats + result.sent.errors > 0 {
                rows.push(Row::new(
                    format!("{name}: missing, wrong taxi, repeats, errors"),
                    format!(
                        "{}, {}, {}, {}",
                        d.missing(),
                        d.wrong_taxi,
                        d.repeats,
                        result.sent.errors
                    ),
                ));
            }
        }
    }
    let _ = writeln!(out);
    out.push_str(&table(&rows));

    let _ = writeln!(out, "\nTarget");
    match &api {
        Some(api) => {
            let p99 = ms(api.delivery.latency.p99_us);
            let _ = writeln!(
                out,
                "  API call -> taxi p99 under {TARGET_P99_MS} ms with {} taxis and position \
                 traffic: {} ({p99:.2} ms)",
                args.taxis,
                if p99 < TARGET_P99_MS {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
        None => {
            let _ = writeln!(out, "  API phase not run or failed");
        }
    }
    if let Some(mqtt) = &mqtt {
        let p99 = ms(mqtt.delivery.latency.p99_us);
        let _ = writeln!(
            out,
            "  direct MQTT -> taxi p99 under {TARGET_P99_MS} ms: {} ({p99:.2} ms)",
            if p99 < TARGET_P99_MS {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    if !results.order_states.is_empty() {
        let _ = writeln!(
            out,
            "\nOrders in PostgreSQL at the end (sender: state count)"
        );
        for (sender, state, count) in &results.order_states {
            let _ = writeln!(out, "  {sender}: {state} {count}");
        }
    }
    if !results.unanswered.is_empty() {
        let _ = writeln!(
            out,
            "\nUnanswered orders (first few): order id, state, acks stored for it"
        );
        for (order_id, state, acks) in &results.unanswered {
            let _ = writeln!(out, "  {order_id}: {state}, {acks} acks");
        }
    }
    out.push_str(&failures(results));
    out
}

fn failures(results: &DispatchResults) -> String {
    let mut out = String::new();
    let mut notes = Vec::new();
    if let Some(e) = &results.platform_error {
        notes.push(format!("platform: {e}"));
    }
    for (name, result) in [
        ("mosquitto", &results.mosquitto),
        ("mqtt", &results.mqtt),
        ("api", &results.api),
        ("api-throughput", &results.throughput),
    ] {
        match result {
            Some(Err(e)) => notes.push(format!("{name}: failed: {e}")),
            Some(Ok(r)) => notes.extend(r.sent.first_errors.iter().map(|e| format!("{name}: {e}"))),
            None => {}
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nErrors (first few)");
        for note in notes {
            let _ = writeln!(out, "  {note}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dispatch::senders::Sent;
    use crate::dispatch::tracker::Delivery;

    fn phase(p50_ms: u64, p99_ms: u64, sent: u64, received: u64) -> PhaseResult {
        PhaseResult {
            sent: Sent {
                sent,
                accepted: sent,
                elapsed: Duration::from_secs(10),
                answer: Some(LatencySummary {
                    p50_us: 1_000,
                    p99_us: 3_000,
                    max_us: 4_000,
                }),
                ..Sent::default()
            },
            delivery: Delivery {
                sent,
                received,
                latency: LatencySummary {
                    p50_us: p50_ms * 1000,
                    p99_us: p99_ms * 1000,
                    max_us: p99_ms * 2000,
                },
                ..Delivery::default()
            },
        }
    }

    #[test]
    fn report_compares_each_way_in_with_its_baseline_and_judges_the_target() {
        let args = DispatchArgs {
            taxis: 1000,
            position_rate: 1.0,
            order_rate: 50.0,
            seconds: 10.0,
            warmup: 3.0,
            throughput_seconds: 5.0,
            concurrency: 16,
            broker_bin: "broker".into(),
            mosquitto_bin: "mosquitto".into(),
            phases: vec![
                DispatchPhase::Mosquitto,
                DispatchPhase::Mqtt,
                DispatchPhase::Api,
                DispatchPhase::ApiThroughput,
            ],
            keep: false,
        };
        let results = DispatchResults {
            mosquitto: Some(Ok(phase(2, 4, 500, 500))),
            mqtt: Some(Ok(phase(3, 8, 500, 500))),
            api: Some(Ok(phase(6, 16, 500, 499))),
            throughput: Some(Err("bridge died".to_owned())),
            order_states: vec![("api".to_owned(), "accepted".to_owned(), 999)],
            unanswered: vec![("api-7".to_owned(), "sent".to_owned(), 2)],
            platform_error: None,
        };
        let text = render(&args, &results);
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_default()
                .to_owned()
        };
        let direct = line("direct MQTT -> taxi p99");
        assert!(
            direct.contains("8.00") && direct.contains("4.00 Mosquitto") && direct.contains("2.00"),
            "{direct}"
        );
        let api = line("API call -> taxi p99");
        assert!(
            api.contains("16.00") && api.contains("8.00 direct") && api.contains("2.00"),
            "{api}"
        );
        assert!(line("API: missing").contains("1, 0, 0, 0"), "{text}");
        assert!(
            line("under 20 ms with 1000 taxis").contains("met (16.00 ms)"),
            "{text}"
        );
        assert!(text.contains("api: accepted 999"), "{text}");
        assert!(text.contains("api-7: sent, 2 acks"), "{text}");
        assert!(
            text.contains("api-throughput: failed: bridge died"),
            "{text}"
        );
    }
}
