//! Prometheus (Debian's `prometheus` package) as a child process serving its UI and API over
//! HTTPS with basic auth, and the files it runs on: the scrape configuration made from the
//! shipped `monitoring/prometheus.yml` with the addresses actually bound, and the web
//! configuration made from `monitoring/web.yml` (certificate, key, users with bcrypt hashes
//! made by `htpasswd` from apache2-utils).
//!
//! The tests and `platform --monitoring` both run Prometheus this way.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// How to get the programs this module runs, for error messages.
pub const INSTALL_HINT: &str =
    "install them with `sudo apt-get install prometheus apache2-utils` (Debian 12; scripts/setup does)";

/// What Prometheus logs once it serves requests.
const READY_LINE: &str = "Server is ready to receive web requests.";

/// How long Prometheus may take to start (it replays its write-ahead log first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Fails, saying how to install them, unless `prometheus` and `htpasswd` are on the `PATH`.
pub fn require_programs() -> Result<()> {
    let missing: Vec<&str> = ["prometheus", "htpasswd"]
        .into_iter()
        .filter(|program| find_program(program).is_none())
        .collect();
    if !missing.is_empty() {
        bail!("{} not found: {INSTALL_HINT}", missing.join(" and "));
    }
    Ok(())
}

/// `program` in one of the `PATH`'s directories.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A random password: 24 hexadecimal digits from the kernel's generator.
pub fn random_password() -> Result<String> {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The bcrypt hash of `password` (cost 10), as Prometheus' `basic_auth_users` wants it, made
/// by `htpasswd` (the password goes through its standard input, not its arguments).
pub fn bcrypt_hash(password: &str) -> Result<String> {
    let mut child = Command::new("htpasswd")
        .args(["-niBC", "10", "user"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running htpasswd: {INSTALL_HINT}"))?;
    child
        .stdin
        .take()
        .context("htpasswd's standard input")?
        .write_all(format!("{password}\n").as_bytes())
        .context("writing the password to htpasswd")?;
    let output = child.wait_with_output().context("waiting for htpasswd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "htpasswd failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let hash = stdout
        .trim()
        .strip_prefix("user:")
        .with_context(|| format!("unexpected htpasswd output {stdout:?}"))?;
    ensure!(
        hash.starts_with("$2"),
        "htpasswd did not make a bcrypt hash: {hash:?}"
    );
    Ok(hash.to_owned())
}

/// A YAML double-quoted string.
fn quoted(value: &str) -> String {
    let mut out = String::from('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The indentation of `line`.
fn indent(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// The web configuration `template` (the layout of `monitoring/web.yml`) with this server
/// certificate and key and these users (name, bcrypt hash) instead of its own.
pub fn web_config(
    template: &str,
    cert: &Path,
    key: &Path,
    users: &[(&str, &str)],
) -> Result<String> {
    ensure!(!users.is_empty(), "a web configuration needs a user");
    let mut out = Vec::new();
    let (mut cert_seen, mut key_seen, mut users_seen) = (false, false, false);
    let mut in_users = false;
    for line in template.lines() {
        let trimmed = line.trim_start();
        if in_users {
            if line.starts_with(' ') || trimmed.is_empty() {
                continue;
            }
            in_users = false;
        }
        if trimmed.starts_with("cert_file:") {
            out.push(format!(
                "{}cert_file: {}",
                indent(line),
                quoted(&cert.display().to_string())
            ));
            cert_seen = true;
        } else if trimmed.starts_with("key_file:") {
            out.push(format!(
                "{}key_file: {}",
                indent(line),
                quoted(&key.display().to_string())
            ));
            key_seen = true;
        } else if line.starts_with("basic_auth_users:") {
            out.push(line.to_owned());
            for (name, hash) in users {
                out.push(format!("  {name}: {}", quoted(hash)));
            }
            in_users = true;
            users_seen = true;
        } else {
            out.push(line.to_owned());
        }
    }
    ensure!(
        cert_seen && key_seen && users_seen,
        "the web configuration template lacks cert_file, key_file or basic_auth_users"
    );
    Ok(out.join("\n") + "\n")
}

/// What changes between the shipped scrape configuration and a running one.
#[derive(Clone, Debug)]
pub struct ScrapeSettings {
    /// Every job of the template with the address to scrape (`host:port`), or `None` to
    /// leave the job out.
    pub targets: Vec<(String, Option<String>)>,
    /// The CA file the HTTPS jobs trust instead of the template's.
    pub ca_file: PathBuf,
    /// Scrape and rule evaluation interval instead of the template's (e.g. `1s`), if set.
    pub interval: Option<String>,
}

/// The scrape configuration `template` (the layout of `monitoring/prometheus.yml`: a
/// `scrape_configs:` list whose items start with `  - job_name: <name>`, each with one
/// `- targets: [...]` line) with `settings` applied. Rule files stay relative to the
/// configuration file: put the rules next to it.
pub fn scrape_config(template: &str, settings: &ScrapeSettings) -> Result<String> {
    let (head, jobs) = template
        .split_once("\nscrape_configs:\n")
        .context("the scrape configuration has no top-level scrape_configs list")?;
    let mut out = String::new();
    for line in head.lines() {
        let trimmed = line.trim_start();
        match (&settings.interval, trimmed.split_once(':')) {
            (Some(interval), Some(("scrape_interval" | "evaluation_interval", _)))
                if line.starts_with("  ") =>
            {
                let key = trimmed.split_once(':').map_or("", |(key, _)| key);
                out.push_str(&format!("{}{key}: {interval}\n", indent(line)));
            }
            (Some(_), Some(("scrape_timeout", _))) if line.starts_with("  ") => {
                // A timeout longer than the interval is refused: the interval bounds it.
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push_str("\nscrape_configs:\n");

    // Items of the list, each with the comment lines just above it.
    let mut blocks: Vec<(Option<String>, Vec<&str>)> = vec![(None, Vec::new())];
    for line in jobs.lines() {
        if let Some(name) = line.strip_prefix("  - job_name:") {
            let previous = &mut blocks.last_mut().context("no block")?.1;
            let mut comments = Vec::new();
            while previous
                .last()
                .is_some_and(|l| l.trim_start().starts_with('#'))
            {
                comments.extend(previous.pop());
            }
            comments.reverse();
            comments.push(line);
            blocks.push((Some(name.trim().trim_matches('"').to_owned()), comments));
        } else {
            blocks.last_mut().context("no block")?.1.push(line);
        }
    }
    let mut used = Vec::new();
    for (job, lines) in blocks {
        let Some(job) = job else {
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        };
        let Some((_, target)) = settings.targets.iter().find(|(name, _)| *name == job) else {
            bail!("the scrape configuration has a job {job:?} with no address given for it");
        };
        used.push(job.clone());
        let Some(target) = target else {
            continue;
        };
        let mut targets_lines = 0;
        for line in lines {
            let trimmed = line.trim_start();
            if trimmed.starts_with("- targets:") {
                out.push_str(&format!(
                    "{}- targets: [{}]\n",
                    indent(line),
                    quoted(target)
                ));
                targets_lines += 1;
            } else if trimmed.starts_with("ca_file:") {
                out.push_str(&format!(
                    "{}ca_file: {}\n",
                    indent(line),
                    quoted(&settings.ca_file.display().to_string())
                ));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        ensure!(
            targets_lines == 1,
            "job {job:?} of the scrape configuration has {targets_lines} `- targets:` lines, not one"
        );
    }
    for (job, _) in &settings.targets {
        ensure!(
            used.contains(job),
            "the scrape configuration has no job {job:?}"
        );
    }
    Ok(out)
}

/// Where a [`Prometheus`] keeps its files and listens.
#[derive(Clone, Debug)]
pub struct Options {
    pub config_file: PathBuf,
    pub web_config_file: PathBuf,
    /// The TSDB directory (created if missing).
    pub storage: PathBuf,
    pub listen: SocketAddr,
    /// Its standard output and error (rewritten at each start).
    pub log_file: PathBuf,
}

/// A running `prometheus`, stopped (SIGTERM, then SIGKILL after 10 s) on drop.
pub struct Prometheus {
    child: Child,
    options: Options,
}

impl Prometheus {
    /// Starts Prometheus and waits until it serves requests.
    pub fn start(options: &Options) -> Result<Prometheus> {
        require_programs()?;
        std::fs::create_dir_all(&options.storage)
            .with_context(|| format!("creating {}", options.storage.display()))?;
        let log = std::fs::File::create(&options.log_file)
            .with_context(|| format!("creating {}", options.log_file.display()))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", options.config_file.display()))
            .arg(format!(
                "--web.config.file={}",
                options.web_config_file.display()
            ))
            .arg(format!("--storage.tsdb.path={}", options.storage.display()))
            .arg(format!("--web.listen-address={}", options.listen))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting prometheus: {INSTALL_HINT}"))?;
        let mut prometheus = Prometheus {
            child,
            options: options.clone(),
        };
        prometheus.wait_ready()?;
        Ok(prometheus)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for prometheus")? {
                bail!(
                    "prometheus exited with {status}; its log ends with:\n{}",
                    self.log_tail(20)
                );
            }
            let log = std::fs::read_to_string(&self.options.log_file).unwrap_or_default();
            if log.contains(READY_LINE) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready within {START_TIMEOUT:?}; its log ends with:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where it listens (HTTPS).
    pub fn addr(&self) -> SocketAddr {
        self.options.listen
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.options.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "global:
  scrape_interval: 15s
  scrape_timeout: 10s
  evaluation_interval: 15s

rule_files:
  - rules/*.yml

scrape_configs:
  # The broker.
  - job_name: broker
    static_configs:
      - targets: [\"127.0.0.1:9883\"]

  # Reporting, over HTTPS.
  - job_name: reporting
    scheme: https
    tls_config:
      ca_file: ../certs/dev/ca.pem
    static_configs:
      - targets: [\"localhost:9887\"]
";

    #[test]
    fn scrape_config_sets_addresses_and_leaves_out_jobs_without_one() {
        let settings = ScrapeSettings {
            targets: vec![
                ("broker".to_owned(), Some("127.0.0.1:4000".to_owned())),
                ("reporting".to_owned(), None),
            ],
            ca_file: PathBuf::from("/tmp/ca.pem"),
            interval: Some("1s".to_owned()),
        };
        let config = scrape_config(TEMPLATE, &settings).unwrap();
        assert!(
            config.contains("- targets: [\"127.0.0.1:4000\"]"),
            "{config}"
        );
        assert!(config.contains("  scrape_interval: 1s\n"), "{config}");
        assert!(config.contains("  evaluation_interval: 1s\n"), "{config}");
        assert!(!config.contains("scrape_timeout"), "{config}");
        assert!(!config.contains("reporting"), "{config}");
        assert!(!config.contains("9883"), "{config}");
        assert!(config.contains("# The broker."), "{config}");
    }

    #[test]
    fn scrape_config_replaces_the_ca_of_https_jobs() {
        let settings = ScrapeSettings {
            targets: vec![
                ("broker".to_owned(), None),
                ("reporting".to_owned(), Some("localhost:5000".to_owned())),
            ],
            ca_file: PathBuf::from("/srv/ca.pem"),
            interval: None,
        };
        let config = scrape_config(TEMPLATE, &settings).unwrap();
        assert!(config.contains("ca_file: \"/srv/ca.pem\""), "{config}");
        assert!(config.contains("[\"localhost:5000\"]"), "{config}");
        assert!(config.contains("scrape_interval: 15s"), "{config}");
        assert!(!config.contains("job_name: broker"), "{config}");
    }

    #[test]
    fn scrape_config_refuses_a_job_it_has_no_address_for() {
        let settings = ScrapeSettings {
            targets: vec![("broker".to_owned(), Some("127.0.0.1:1".to_owned()))],
            ca_file: PathBuf::from("/tmp/ca.pem"),
            interval: None,
        };
        let error = scrape_config(TEMPLATE, &settings).unwrap_err();
        assert!(error.to_string().contains("reporting"), "{error}");
    }

    #[test]
    fn web_config_sets_certificate_key_and_users() {
        let template = "tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\nbasic_auth_users:\n  someone: \"$2y$placeholder\"\n";
        let config = web_config(
            template,
            Path::new("/c/server.pem"),
            Path::new("/c/server.key"),
            &[("prometheus", "$2y$10$abc")],
        )
        .unwrap();
        assert_eq!(
            config,
            "tls_server_config:\n  cert_file: \"/c/server.pem\"\n  key_file: \"/c/server.key\"\nbasic_auth_users:\n  prometheus: \"$2y$10$abc\"\n"
        );
    }
}
