//! MQTT conformance: the Eclipse paho interoperability suite (`tests/conformance/`) against
//! the broker, every case alone, through the mTLS shim, with a `conformance` role that may use
//! every topic and shared subscriptions (see `tests::conformance`).
//!
//! Each case listed here passes (a case that fails on one of the suite's own races gets a
//! fresh broker and another try, three in all). Cases that exercise what the security model
//! forbids on purpose, or that cannot end, are skipped (`#[ignore]`) with the reason next to
//! them. The cases not listed still fail.

use anyhow::Result;
use tests::conformance::{run_case, Suite};

async fn run(suite: Suite, case: &str) -> Result<()> {
    run_case(suite, case, |_| {}).await
}

/// One test per case: `cases!(module, Suite, case, #[ignore = "why"] case, ...)`.
macro_rules! cases {
    ($module:ident, $suite:expr, $($(#[$attr:meta])* $case:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[allow(non_snake_case)] // the suite's own names (`testBasic`)
                $(#[$attr])*
                async fn $case() -> Result<()> {
                    run($suite, stringify!($case)).await
                }
            )*
        }
    };
}

cases!(
    v5,
    Suite::V5,
    test_basic,
    test_retained_message,
    test_will_message,
    test_zero_length_clientid,
    test_offline_message_queueing,
    test_overlapping_subscriptions,
    test_keepalive,
    test_redelivery_on_reconnect,
    test_unsubscribe,
    test_session_expiry,
    test_user_properties,
    test_payload_format,
    test_publication_expiry,
    test_subscribe_options,
    test_assigned_clientid,
    test_subscribe_identifiers,
    test_request_response,
    test_client_topic_alias,
    test_maximum_packet_size,
    test_server_keep_alive,
    test_flow_control1,
    test_will_delay,
    test_shared_subscriptions,
    #[ignore = "publishes to a `$` topic, which no role may do: `$` topics are the broker's and \
                no pattern covers them (the client is disconnected)"]
    test_dollar_topics,
    #[ignore = "needs `test/nosubscribe` refused to a client that may subscribe to `#`: roles \
                are allow-lists (refused filters: tests/tests/authorization.rs)"]
    test_subscribe_failure,
    #[ignore = "expects the broker to alias its topics towards the client; server-side topic \
                aliases are optional in MQTT 5 and the broker sends none"]
    test_server_topic_alias,
    #[ignore = "sends Receive Maximum + 1 QoS 2 messages; the broker answers DISCONNECT 0x93 and \
                closes, as MQTT 5 requires, but the suite's client first writes PUBRELs for the \
                PUBRECs it reads and fails on the closed connection (tested in mqtt5.rs); it \
                hangs against Mosquitto 2.0"]
    test_flow_control2,
);

cases!(
    v311,
    Suite::V311,
    testBasic,
    test_retained_messages,
    test_zero_length_clientid,
    test_offline_message_queueing,
    test_overlapping_subscriptions,
    test_keepalive,
    test_redelivery_on_reconnect,
    test_unsubscribe,
    #[ignore = "publishes to a `$` topic, which no role may do: `$` topics are the broker's and \
                no pattern covers them (the client is disconnected)"]
    test_dollar_topics,
    #[ignore = "needs `test/nosubscribe` refused to a client that may subscribe to `#`: roles \
                are allow-lists (refused filters: tests/tests/authorization.rs)"]
    test_subscribe_failure,
);
