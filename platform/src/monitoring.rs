//! `platform --monitoring`: Prometheus next to the platform.
//!
//! Its configuration is the shipped one (`monitoring/prometheus.yml` and `monitoring/rules/`,
//! built into this program) with the addresses this platform actually bound; it is written
//! into `<data>/monitoring/` with the web configuration: HTTPS with the development PKI's
//! server certificate, and basic auth for the user `prometheus` with a random password made
//! on first use and kept in `<data>/monitoring/password`. The samples stay in
//! `<data>/monitoring/tsdb/`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use testkit::prometheus::{Options, Prometheus, ScrapeSettings};

/// The shipped scrape configuration.
const CONFIG: &str = include_str!("../../monitoring/prometheus.yml");
/// The shipped web configuration (its certificate, key and users are replaced).
const WEB_CONFIG: &str = include_str!("../../monitoring/web.yml");
/// The shipped rule files, by name.
pub const RULES: &[(&str, &str)] = &[
    (
        "alerts.yml",
        include_str!("../../monitoring/rules/alerts.yml"),
    ),
    (
        "recording.yml",
        include_str!("../../monitoring/rules/recording.yml"),
    ),
];

/// The one user of this Prometheus.
pub const USER: &str = "prometheus";

/// What the platform runs, by the job of `monitoring/prometheus.yml` that scrapes it.
#[derive(Clone, Debug)]
pub struct Targets {
    pub broker: SocketAddr,
    pub bridge: SocketAddr,
    pub analytics: SocketAddr,
    /// The reporting service's `/metrics`, when the platform runs one.
    pub reporting: Option<SocketAddr>,
}

/// A running Prometheus and how to reach it.
pub struct Monitoring {
    pub url: String,
    pub password: String,
    /// The CA that signed its certificate.
    pub ca: PathBuf,
    pub dir: PathBuf,
    _prometheus: Prometheus,
}

/// Fails with how to install them unless Prometheus and `htpasswd` are installed.
pub fn check_installed() -> Result<()> {
    testkit::prometheus::require_programs()
        .context("`platform --monitoring` runs Prometheus from the system's packages")
}

/// The scrape configuration for `targets`, every service trusted with `ca`.
pub fn scrape_config(targets: &Targets, ca: &Path) -> Result<String> {
    let address = |addr: SocketAddr| Some(scrape_address(addr).to_string());
    let settings = ScrapeSettings {
        targets: vec![
            ("broker".to_owned(), address(targets.broker)),
            ("bridge".to_owned(), address(targets.bridge)),
            ("analytics".to_owned(), address(targets.analytics)),
            ("reporting".to_owned(), targets.reporting.and_then(address)),
        ],
        ca_file: ca.to_owned(),
        interval: None,
    };
    testkit::prometheus::scrape_config(CONFIG, &settings)
        .context("making the scrape configuration from monitoring/prometheus.yml")
}

/// Where to reach a service listening on `addr` from this machine.
fn scrape_address(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// Writes the configuration into `<data>/monitoring/` and starts Prometheus on `port` (all
/// of the machine's loopback), with the certificates of `certs` (the development PKI).
pub fn start(data: &Path, certs: &Path, targets: &Targets, port: u16) -> Result<Monitoring> {
    let dir = absolute(&data.join("monitoring"))?;
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).with_context(|| format!("creating {}", rules.display()))?;
    let ca = absolute(&certs.join("ca.pem"))?;
    let cert = absolute(&certs.join("server.pem"))?;
    let key = absolute(&certs.join("server.key"))?;

    let config_file = dir.join("prometheus.yml");
    write(&config_file, &scrape_config(targets, &ca)?)?;
    for (name, text) in RULES {
        write(&rules.join(name), text)?;
    }
    let password = password(&dir.join("password"))?;
    let hash = testkit::prometheus::bcrypt_hash(&password)?;
    let web_config_file = dir.join("web.yml");
    write(
        &web_config_file,
        &testkit::prometheus::web_config(WEB_CONFIG, &cert, &key, &[(USER, &hash)])?,
    )?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let prometheus = Prometheus::start(&Options {
        config_file,
        web_config_file,
        storage: dir.join("tsdb"),
        listen,
        log_file: dir.join("prometheus.log"),
    })
    .with_context(|| format!("starting Prometheus (configuration in {})", dir.display()))?;
    Ok(Monitoring {
        url: format!("https://localhost:{port}"),
        password,
        ca,
        dir,
        _prometheus: prometheus,
    })
}

/// The password kept in `path`, made (random) and written there (mode 0600) on first use.
fn password(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let password = testkit::prometheus::random_password()?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(format!("{password}\n").as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(password)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// What to print about it.
pub fn guide(monitoring: &Monitoring) -> String {
    let url = &monitoring.url;
    let password = &monitoring.password;
    let ca = monitoring.ca.display();
    format!(
        "Monitoring: Prometheus at {url} (user {USER}, password {password}, CA {ca}):
  alerts {url}/alerts, targets {url}/targets; configuration and password in {dir}
  curl --cacert {ca} -u {USER}:{password} '{url}/api/v1/query?query=up'
  Grafana: monitoring/README.md (datasource URL {url}, basic auth {USER}, the CA above)

",
        dir = monitoring.dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::Command;

    use super::*;

    fn monitoring_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
    }

    /// An empty directory of this test, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("platform-monitoring-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn every_shipped_rule_file_is_built_in() {
        let shipped: BTreeSet<String> = std::fs::read_dir(monitoring_dir().join("rules"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yml"))
            .collect();
        let built_in: BTreeSet<String> = RULES.iter().map(|(name, _)| (*name).to_owned()).collect();
        assert_eq!(shipped, built_in);
    }

    /// The configuration the platform writes passes `promtool check config`, with the
    /// rules next to it, and scrapes the addresses given.
    #[test]
    fn the_written_configuration_passes_promtool() {
        let dir = Scratch::new("config");
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        for (name, text) in RULES {
            std::fs::write(dir.path().join("rules").join(name), text).unwrap();
        }
        let targets = Targets {
            broker: "0.0.0.0:19883".parse().unwrap(),
            bridge: "127.0.0.1:19884".parse().unwrap(),
            analytics: "127.0.0.1:19886".parse().unwrap(),
            reporting: Some("127.0.0.1:19887".parse().unwrap()),
        };
        let ca = dir.path().join("ca.pem");
        let config = scrape_config(&targets, &ca).unwrap();
        for target in [
            "127.0.0.1:19883",
            "127.0.0.1:19884",
            "127.0.0.1:19886",
            "127.0.0.1:19887",
        ] {
            assert!(
                config.contains(&format!("[\"{target}\"]")),
                "{target}:\n{config}"
            );
        }
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, &config).unwrap();
        let output = Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{text}\n{config}");
        assert!(
            text.contains(&format!("SUCCESS: {} rule files found", RULES.len())),
            "{text}"
        );
    }

    #[test]
    fn without_reporting_the_job_is_left_out() {
        let targets = Targets {
            broker: "127.0.0.1:9883".parse().unwrap(),
            bridge: "127.0.0.1:9884".parse().unwrap(),
            analytics: "127.0.0.1:9886".parse().unwrap(),
            reporting: None,
        };
        let config = scrape_config(&targets, Path::new("/ca.pem")).unwrap();
        assert!(!config.contains("reporting"), "{config}");
        assert!(config.contains("job_name: analytics"), "{config}");
    }

    #[test]
    fn the_password_is_made_once_and_kept() {
        let dir = Scratch::new("password");
        let path = dir.path().join("password");
        let first = password(&path).unwrap();
        assert!(first.len() >= 20, "{first}");
        assert_eq!(password(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
