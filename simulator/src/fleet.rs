//! `fleet`: N simulated taxis ([`crate::taxi`]) against a running broker until Ctrl-C (or
//! until the caller's future is dropped): positions, answers to inbox messages, tours,
//! connection losses. Missing taxi certificates are issued from the development PKI.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pki;
use crate::taxi::{Behaviour, Counters, SimulatedTaxi, TaxiSpec};

/// Everything `fleet` is told.
#[derive(Clone, Debug)]
pub struct FleetArgs {
    pub taxis: usize,
    pub host: String,
    pub port: u16,
    pub certs: PathBuf,
    /// How every taxi behaves (its `rate` is positions per second per taxi).
    pub behaviour: Behaviour,
}

const STATS_EVERY: Duration = Duration::from_secs(5);

/// Runs the fleet until Ctrl-C.
pub async fn run(args: FleetArgs) -> Result<()> {
    if args.taxis == 0 || args.taxis > 20_000 {
        bail!("--taxis must be between 1 and 20000");
    }
    args.behaviour.validate()?;
    let (dir, count) = (args.certs.clone(), args.taxis);
    let clients = tokio::task::spawn_blocking(move || pki::dev_taxis(&dir, count))
        .await
        .context("certificate task failed")??;
    println!(
        "fleet: {} taxis, {} positions/s each, broker {}:{}, certificates in {}",
        args.taxis,
        args.behaviour.rate,
        args.host,
        args.port,
        args.certs.display()
    );

    let counters = Arc::new(Counters::default());
    let taxis: Vec<SimulatedTaxi> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            let spec = TaxiSpec {
                client,
                host: args.host.clone(),
                port: args.port,
                behaviour: args.behaviour.clone(),
                seed: rand::random::<u64>() ^ index as u64,
            };
            SimulatedTaxi::spawn(spec, counters.clone(), None)
        })
        .collect();

    let started = Instant::now();
    let mut ticker = tokio::time::interval(STATS_EVERY);
    ticker.tick().await;
    let mut last_sent = 0;
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for Ctrl-C")?;
                break;
            }
            _ = ticker.tick() => {
                let sent = Counters::get(&counters.positions_sent);
                println!("{}", stats_line(started.elapsed(), args.taxis, &counters, sent - last_sent));
                last_sent = sent;
            }
        }
    }
    println!("stopping");
    for taxi in taxis {
        taxi.stop().await;
    }
    println!(
        "sent {} positions ({} acknowledged publishes in all), {} inbox messages answered, \
         {} tours ended",
        Counters::get(&counters.positions_sent),
        Counters::get(&counters.acked),
        Counters::get(&counters.inbox_new),
        Counters::get(&counters.tours_ended),
    );
    Ok(())
}

/// One line of fleet statistics; `sent` positions since the previous line.
fn stats_line(elapsed: Duration, taxis: usize, counters: &Counters, sent: u64) -> String {
    let get = Counters::get;
    format!(
        "{:>6.0} s  online {}/{}  positions {:.1}/s  inbox {} (+{} again): accepted {} \
         rejected {} (expired {})  tours {} started, {} ended  connection losses {}",
        elapsed.as_secs_f64(),
        counters.connected.load(Ordering::Relaxed),
        taxis,
        sent as f64 / STATS_EVERY.as_secs_f64(),
        get(&counters.inbox_new),
        get(&counters.inbox_repeats),
        get(&counters.accepted),
        get(&counters.rejected),
        get(&counters.expired),
        get(&counters.tours_started),
        get(&counters.tours_ended),
        get(&counters.offline),
    )
}
