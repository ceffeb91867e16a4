//! `taxictl`: the dispatch HTTP API from a terminal.
//!
//! ```sh
//! export TAXICTL_TOKEN=taxi-dev-token            # TAXICTL_URL defaults to http://127.0.0.1:9885
//! taxictl order send --taxi taxi-1 --text "Pick up at Alexanderplatz" --expires-in 600
//! taxictl order show o-1732200000000-1a2b3c4d
//! taxictl order list --taxi taxi-1
//! taxictl token hash "$TAXICTL_TOKEN"            # the sha256 for [[dispatch.api.tokens]]
//! # behind a TLS-terminating proxy:
//! taxictl --url https://dispatch.example --ca proxy-ca.pem order list --taxi taxi-1
//! ```

mod api;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
#[command(
    name = "taxictl",
    about = "Send orders to taxis and follow them, through the dispatch API"
)]
struct Cli {
    /// The dispatch API: http://host:port, or https://host[:port][/prefix] through a
    /// TLS-terminating proxy.
    #[arg(
        long,
        env = "TAXICTL_URL",
        default_value = "http://127.0.0.1:9885",
        global = true
    )]
    url: String,
    /// Bearer token of the API.
    #[arg(long, env = "TAXICTL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM file of the CA certificate(s) to trust for an https:// URL (the proxy's);
    /// without it, the system's CA certificates.
    #[arg(long, env = "TAXICTL_CA", value_name = "PEM", global = true)]
    ca: Option<PathBuf>,
    /// Print the API's JSON answer as it is.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Orders and messages to taxis.
    #[command(subcommand)]
    Order(OrderCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum OrderCommand {
    /// Sends an order (or message) to one taxi.
    Send {
        /// The taxi.
        #[arg(long)]
        taxi: String,
        /// What the driver reads.
        #[arg(long)]
        text: String,
        /// order, message or invoice.
        #[arg(long, default_value = "order")]
        kind: String,
        /// Order id (generated when left out); sending again with the same id is safe.
        #[arg(long)]
        id: Option<String>,
        /// Seconds until the order is void; an expired order is never delivered.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Shows an order: its state and every change.
    Show { order_id: String },
    /// Lists a taxi's orders, newest first.
    List {
        #[arg(long)]
        taxi: String,
        /// Only orders in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Prints the SHA-256 of a token, as `[[dispatch.api.tokens]] sha256` wants it.
    Hash { token: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taxictl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let command = match cli.command {
        Command::Token(TokenCommand::Hash { token }) => {
            println!("{}", hex::encode(Sha256::digest(token.as_bytes())));
            return Ok(());
        }
        Command::Order(command) => command,
    };
    let api = api::Api::new(&cli.url, cli.ca.as_deref())?;
    let token = cli
        .token
        .as_deref()
        .context("no API token: pass --token or set TAXICTL_TOKEN")?;
    let (method, path, body) = match &command {
        OrderCommand::Send {
            taxi,
            text,
            kind,
            id,
            expires_in,
        } => {
            let mut body = json!({ "taxi_id": taxi, "kind": kind, "text": text });
            if let Some(id) = id {
                body["order_id"] = json!(id);
            }
            if let Some(seconds) = expires_in {
                body["expires_in_s"] = json!(seconds);
            }
            (Method::POST, "/v1/orders".to_owned(), Some(body))
        }
        OrderCommand::Show { order_id } => (
            Method::GET,
            format!("/v1/orders/{}", encode(order_id)),
            None,
        ),
        OrderCommand::List { taxi, state, limit } => {
            let mut path = format!("/v1/taxis/{}/orders?limit={limit}", encode(taxi));
            if let Some(state) = state {
                path.push_str(&format!("&state={}", encode(state)));
            }
            (Method::GET, path, None)
        }
    };
    let response = api.call(method, &path, token, body.as_ref()).await?;
    let value: Value =
        serde_json::from_str(&response.body).unwrap_or(Value::String(response.body.clone()));
    if !(200..300).contains(&response.status) {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| response.body.clone());
        bail!("the API answered {}: {message}", response.status);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match command {
        OrderCommand::Send { .. } => {
            println!(
                "order {} for {}: {}",
                text(&value, "order_id"),
                text(&value, "taxi_id"),
                text(&value, "state")
            );
        }
        OrderCommand::Show { .. } => print_order(&value),
        OrderCommand::List { .. } => {
            let orders = value
                .get("orders")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if orders.is_empty() {
                println!("no orders");
            }
            for order in &orders {
                println!(
                    "{:<36} {:<9} {:<8} {:<24} {}",
                    text(order, "order_id"),
                    text(order, "state"),
                    text(order, "kind"),
                    time_text(order.get("created_ms")),
                    text(order, "text")
                );
            }
        }
    }
    Ok(())
}

fn print_order(order: &Value) {
    println!(
        "order {} for {} ({}, from {}): {}",
        text(order, "order_id"),
        text(order, "taxi_id"),
        text(order, "kind"),
        text(order, "sender"),
        text(order, "state")
    );
    println!("  text:    {}", text(order, "text"));
    println!("  created: {}", time_text(order.get("created_ms")));
    println!("  expires: {}", time_text(order.get("expires_ms")));
    if let Some(reason) = order.get("reason").and_then(Value::as_str) {
        println!("  reason:  {reason}");
    }
    for event in order
        .get("history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "  {}  {:<9} {}",
            time_text(event.get("at_ms")),
            text(event, "state"),
            event.get("detail").and_then(Value::as_str).unwrap_or("")
        );
    }
}

fn text(value: &Value, field: &str) -> String {
    match value.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn time_text(ms: Option<&Value>) -> String {
    ms.and_then(Value::as_i64)
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "never".to_owned())
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
