//! Our authorization rules as another broker's configuration: Mosquitto's `acl_file` and the
//! `mosquitto.conf` around it (`broker export-acl`).
//!
//! A fleet that outgrows one machine runs a clustered broker no one here wrote; the services
//! are ordinary MQTT clients and work against it unchanged. What must not be written twice is
//! who may do what: the role rules of [`crate::acl`] (defaults or `[acl.*]` of the broker
//! configuration) stay the one place that says it, and this module translates them.
//!
//! How the translation works, and what it cannot say:
//! - Mosquitto knows a client by its user name; with `use_identity_as_username true` that is
//!   the client certificate's CN, which is what `%c` means in our rules: `%c` becomes `%u`.
//!   The OU (role) is not seen at all.
//! - So one role, the *device role* (`taxi`: thousands of identities no file can list),
//!   becomes `pattern` lines, which Mosquitto applies to every client. Every other role is
//!   written as `user <cn>` blocks, one per service identity: by default one per role, named
//!   like the role (`bridge`, `backoffice`, ...: as in the development PKI), or the
//!   identities given with `--user <cn>=<role>`. A service identity also gets the device
//!   role's patterns with its own CN (`taxi/bridge/position`): harmless as long as no taxi
//!   certificate carries a service's CN.
//! - A publish pattern becomes `write`, a subscribe pattern `read`, both `readwrite`.
//!   Mosquitto's ACL file does not check subscription filters, only each message delivered
//!   (`read`) and published (`write`): a taxi may subscribe to `taxi/+/inbox` but receives
//!   only its own inbox, and a publish to another taxi's topic is dropped (MQTT 5: PUBACK
//!   "not authorized"). Nor can it refuse `$share/...` to a role, bind a client id to a
//!   certificate, or convert payloads to JSON (`payload = "json"`); the file says so in its
//!   comments, and the README lists what this means.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::acl::{PayloadFormat, RoleRules};
use crate::config::Config;

/// The role whose rules become Mosquitto `pattern` lines by default.
pub const DEFAULT_DEVICE_ROLE: &str = "taxi";

/// A service identity written as a `user` block: the certificate's CN and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUser {
    pub name: String,
    pub role: String,
}

impl std::str::FromStr for ServiceUser {
    type Err = String;

    /// `<cn>=<role>`, e.g. `bridge-eu=bridge`.
    fn from_str(text: &str) -> Result<ServiceUser, String> {
        let (name, role) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not <cn>=<role>"))?;
        Ok(ServiceUser {
            name: name.trim().to_owned(),
            role: role.trim().to_owned(),
        })
    }
}

/// Why the rules cannot be exported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("the device role {0:?} has no rules in the configuration")]
    UnknownDeviceRole(String),
    #[error("user {user:?}: role {role:?} has no rules in the configuration")]
    UnknownRole { user: String, role: String },
    #[error("user {user:?}: role {role:?} is the device role, whose clients are covered by its patterns")]
    DeviceRoleUser { user: String, role: String },
    #[error("user {0:?} is not a valid certificate id (1 to 64 of A-Z a-z 0-9 . _ -)")]
    BadUserName(String),
    #[error("user {0:?} is given twice")]
    DuplicateUser(String),
    #[error("a CA or certificate path is not valid UTF-8: {0}")]
    NonUtf8Path(PathBuf),
}

/// Which rules to export and for whom.
#[derive(Clone, Debug)]
pub struct AclExport<'a> {
    rules: &'a BTreeMap<String, RoleRules>,
    device_role: String,
    users: Vec<ServiceUser>,
}

impl<'a> AclExport<'a> {
    /// The rules of `rules`, with `device_role` as patterns and `users` as user blocks; no
    /// users: one per other role, named like the role.
    pub fn new(
        rules: &'a BTreeMap<String, RoleRules>,
        device_role: &str,
        users: &[ServiceUser],
    ) -> Result<AclExport<'a>, ExportError> {
        if !rules.contains_key(device_role) {
            return Err(ExportError::UnknownDeviceRole(device_role.to_owned()));
        }
        let users: Vec<ServiceUser> = if users.is_empty() {
            rules
                .keys()
                .filter(|role| *role != device_role)
                .map(|role| ServiceUser {
                    name: role.clone(),
                    role: role.clone(),
                })
                .collect()
        } else {
            users.to_vec()
        };
        let mut seen = std::collections::BTreeSet::new();
        for user in &users {
            if !wire::is_valid_device_id(&user.name) {
                return Err(ExportError::BadUserName(user.name.clone()));
            }
            if !seen.insert(user.name.as_str()) {
                return Err(ExportError::DuplicateUser(user.name.clone()));
            }
            if user.role == device_role {
                return Err(ExportError::DeviceRoleUser {
                    user: user.name.clone(),
                    role: user.role.clone(),
                });
            }
            if !rules.contains_key(&user.role) {
                return Err(ExportError::UnknownRole {
                    user: user.name.clone(),
                    role: user.role.clone(),
                });
            }
        }
        Ok(AclExport {
            rules,
            device_role: device_role.to_owned(),
            users,
        })
    }

    /// Mosquitto's `acl_file`.
    pub fn mosquitto_acl(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# Mosquitto ACL made by `broker export-acl --format mosquitto` from the broker's role\n\
             # rules; edit those, not this file. Needs `use_identity_as_username true`: a client's\n\
             # user name is its certificate's CN, which %c means in the rules and %u here.\n\
             # Mosquitto does not check subscription filters, only each message delivered (read)\n\
             # or published (write); it does not tie client ids to certificates nor refuse\n\
             # $share/ subscriptions to a role.\n",
        );
        let device = &self.rules[&self.device_role];
        let _ = writeln!(
            out,
            "\n# Role {}: every client, with %u for its own CN.",
            self.device_role
        );
        for (access, pattern) in lines(device) {
            let _ = writeln!(out, "pattern {access} {}", pattern.replace("%c", "%u"));
        }
        for user in &self.users {
            let rules = &self.rules[&user.role];
            let _ = writeln!(out, "\n# Role {}.", user.role);
            if rules.payload == PayloadFormat::Json {
                out.push_str("# Payloads arrive as published, not converted to JSON.\n");
            }
            let _ = writeln!(out, "user {}", user.name);
            for (access, pattern) in lines(rules) {
                let _ = writeln!(out, "topic {access} {}", pattern.replace("%c", &user.name));
            }
        }
        out
    }
}

/// A role's patterns with Mosquitto's access: `write` for publish, `read` for subscribe,
/// `readwrite` for both, in the rules' order (publish first), each pattern once.
fn lines(rules: &RoleRules) -> Vec<(&'static str, &str)> {
    let mut out: Vec<(&'static str, &str)> = Vec::new();
    for pattern in &rules.publish {
        if out.iter().any(|(_, p)| p == pattern) {
            continue;
        }
        let access = if rules.subscribe.contains(pattern) {
            "readwrite"
        } else {
            "write"
        };
        out.push((access, pattern));
    }
    for pattern in &rules.subscribe {
        if !out.iter().any(|(_, p)| p == pattern) {
            out.push(("read", pattern));
        }
    }
    out
}

/// Where the Mosquitto configuration puts what is not in the broker configuration.
#[derive(Clone, Debug)]
pub struct MosquittoFiles {
    /// The file holding [`AclExport::mosquitto_acl`].
    pub acl_file: PathBuf,
    /// Mosquitto's persistence directory (sessions, queued and retained messages).
    pub persistence_dir: PathBuf,
}

impl Default for MosquittoFiles {
    fn default() -> MosquittoFiles {
        MosquittoFiles {
            acl_file: PathBuf::from("/etc/mosquitto/taxi-fleet.acl"),
            persistence_dir: PathBuf::from("/var/lib/mosquitto/"),
        }
    }
}

/// Messages Mosquitto may queue for one offline client with a persistent session (its
/// default, 1000, is a second of the fleet for a stopped bridge connection).
pub const MOSQUITTO_MAX_QUEUED: u32 = 1_000_000;

/// Unacknowledged QoS 1 messages towards one client: the bridge's source expects at most
/// [`MAX_INFLIGHT_PER_CONNECTION`] per connection, as our broker sends.
pub const MAX_INFLIGHT_PER_CONNECTION: u16 = 100;

/// The `mosquitto.conf` matching our broker configuration: one mTLS listener at
/// `mqtt.listen` with the broker's server certificate and client CAs, the CN as user name,
/// the exported ACL, persistent sessions kept on disk, and the limits the services rely on.
pub fn mosquitto_conf(config: &Config, files: &MosquittoFiles) -> Result<String, ExportError> {
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| ExportError::NonUtf8Path(p.to_owned()))
    };
    let mut out = String::new();
    out.push_str(
        "# mosquitto.conf made by `broker export-acl --format mosquitto-conf` from the broker\n\
         # configuration, for the platform on Mosquitto 2.0.\n\
         per_listener_settings false\n\
         allow_anonymous false\n",
    );
    let _ = writeln!(out, "acl_file {}", path(&files.acl_file)?);
    out.push_str(
        "\n# Sessions (the bridge's and dispatch's, the taxis') and their queued messages survive\n\
         # a restart; saved every 10 s and on shutdown.\n\
         persistence true\n",
    );
    let _ = writeln!(
        out,
        "persistence_location {}",
        path(&files.persistence_dir)?
    );
    out.push_str("autosave_interval 10\n");
    let _ = writeln!(
        out,
        "\n# What waits for a stopped bridge connection: up to a million messages, not 1000.\n\
         max_queued_messages {MOSQUITTO_MAX_QUEUED}\n\
         # The bridge acknowledges after its database commit: at most {MAX_INFLIGHT_PER_CONNECTION} unacknowledged\n\
         # messages per connection, as with the platform's own broker.\n\
         max_inflight_messages {MAX_INFLIGHT_PER_CONNECTION}\n\
         set_tcp_nodelay true"
    );
    let _ = writeln!(out, "max_packet_size {}", config.mqtt.max_packet_size);
    if config.mqtt.max_keep_alive_s > 0 {
        let _ = writeln!(out, "max_keepalive {}", config.mqtt.max_keep_alive_s);
    }
    let listen = config.mqtt.listen;
    let _ = writeln!(
        out,
        "\n# mTLS: a client certificate from the fleet CA is required; its CN is the user name.\n\
         listener {} {}",
        listen.port(),
        listen.ip()
    );
    let _ = writeln!(out, "max_connections {}", config.mqtt.max_connections);
    let _ = writeln!(out, "certfile {}", path(&config.tls.server_cert)?);
    let _ = writeln!(out, "keyfile {}", path(&config.tls.server_key)?);
    let mut cas = config.tls.client_ca.iter();
    if let Some(first) = cas.next() {
        let _ = writeln!(out, "cafile {}", path(first)?);
    }
    for other in cas {
        let _ = writeln!(
            out,
            "# Also trusted by the broker: append it to the cafile above: {}",
            path(other)?
        );
    }
    let mut crls = config.tls.crl.iter();
    if let Some(first) = crls.next() {
        let _ = writeln!(out, "crlfile {}", path(first)?);
    }
    for other in crls {
        let _ = writeln!(
            out,
            "# Also a CRL of the broker: append it to the crlfile above: {}",
            path(other)?
        );
    }
    out.push_str("require_certificate true\nuse_identity_as_username true\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::default_rules;

    fn acl_text() -> String {
        let rules = default_rules();
        AclExport::new(&rules, DEFAULT_DEVICE_ROLE, &[])
            .expect("defaults export")
            .mosquitto_acl()
    }

    /// The lines after `user <name>` up to the next blank line.
    fn user_block(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .skip_while(|line| *line != format!("user {name}"))
            .skip(1)
            .take_while(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_taxi_gets_exactly_its_own_topics_as_patterns() {
        let text = acl_text();
        let patterns: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("pattern "))
            .collect();
        assert_eq!(
            patterns,
            [
                "pattern write taxi/%u/position",
                "pattern write taxi/%u/tour",
                "pattern write taxi/%u/ack",
                "pattern write taxi/%u/status",
                "pattern read taxi/%u/inbox",
            ]
        );
        assert!(!text.contains("user taxi"), "{text}");
    }

    #[test]
    fn the_bridge_gets_exactly_its_block() {
        let text = acl_text();
        assert_eq!(
            user_block(&text, "bridge"),
            [
                "topic readwrite taxi/+/inbox",
                "topic write backoffice/invoices",
                "topic read taxi/+/position",
                "topic read taxi/+/tour",
                "topic read taxi/+/ack",
                "topic read taxi/+/status",
            ]
        );
    }

    #[test]
    fn every_rule_of_every_role_appears() {
        let rules = default_rules();
        let text = acl_text();
        for (role, role_rules) in &rules {
            let (prefix, block): (&str, Vec<String>) = if role == DEFAULT_DEVICE_ROLE {
                (
                    "pattern",
                    text.lines()
                        .filter(|l| l.starts_with("pattern "))
                        .map(str::to_owned)
                        .collect(),
                )
            } else {
                ("topic", user_block(&text, role))
            };
            let has = |access: &[&str], pattern: &str| {
                let pattern = if role == DEFAULT_DEVICE_ROLE {
                    pattern.replace("%c", "%u")
                } else {
                    pattern.replace("%c", role)
                };
                access
                    .iter()
                    .any(|a| block.contains(&format!("{prefix} {a} {pattern}")))
            };
            for pattern in &role_rules.publish {
                assert!(
                    has(&["write", "readwrite"], pattern),
                    "{role} publish {pattern}:\n{text}"
                );
            }
            for pattern in &role_rules.subscribe {
                assert!(
                    has(&["read", "readwrite"], pattern),
                    "{role} subscribe {pattern}:\n{text}"
                );
            }
            let lines = role_rules.publish.len() + role_rules.subscribe.len();
            assert!(
                block.len() <= lines,
                "{role}: more lines than rules:\n{text}"
            );
        }
        for role in ["analytics", "backoffice", "bridge", "operator"] {
            assert!(
                text.contains(&format!("\nuser {role}\n")),
                "{role}:\n{text}"
            );
        }
    }

    #[test]
    fn the_operator_is_told_that_payloads_stay_as_published() {
        let text = acl_text();
        assert!(text
            .contains("# Payloads arrive as published, not converted to JSON.\nuser operator\n"));
        assert_eq!(
            user_block(&text, "operator"),
            [
                "topic read taxi/#",
                "topic read backoffice/#",
                "topic read analytics/#"
            ]
        );
    }

    #[test]
    fn named_users_replace_the_default_ones() {
        let rules = default_rules();
        let users: Vec<ServiceUser> = ["bridge-eu=bridge", "ops-1=operator"]
            .iter()
            .map(|u| u.parse().expect("user"))
            .collect();
        let text = AclExport::new(&rules, "taxi", &users)
            .expect("export")
            .mosquitto_acl();
        assert_eq!(user_block(&text, "bridge-eu").len(), 6);
        assert_eq!(user_block(&text, "ops-1").len(), 3);
        assert!(!text.contains("user bridge\n"), "{text}");
        assert!(!text.contains("user backoffice"), "{text}");
    }

    #[test]
    fn own_id_patterns_of_a_service_name_the_service() {
        let mut rules = default_rules();
        if let Some(analytics) = rules.get_mut("analytics") {
            analytics.subscribe.push("control/%c/#".to_owned());
        }
        let text = AclExport::new(&rules, "taxi", &[])
            .expect("export")
            .mosquitto_acl();
        assert!(
            user_block(&text, "analytics").contains(&"topic read control/analytics/#".to_owned())
        );
    }

    #[test]
    fn bad_exports_are_refused() {
        let rules = default_rules();
        let user = |s: &str| vec![s.parse::<ServiceUser>().expect("user")];
        assert_eq!(
            AclExport::new(&rules, "car", &[]).err(),
            Some(ExportError::UnknownDeviceRole("car".to_owned()))
        );
        assert!(matches!(
            AclExport::new(&rules, "taxi", &user("x=nobody")),
            Err(ExportError::UnknownRole { .. })
        ));
        assert!(matches!(
            AclExport::new(&rules, "taxi", &user("taxi-1=taxi")),
            Err(ExportError::DeviceRoleUser { .. })
        ));
        assert!(matches!(
            AclExport::new(&rules, "taxi", &user("a+b=bridge")),
            Err(ExportError::BadUserName(_))
        ));
        assert!("bridge".parse::<ServiceUser>().is_err());
        let twice: Vec<ServiceUser> = vec![
            "b=bridge".parse().expect("user"),
            "b=operator".parse().expect("user"),
        ];
        assert_eq!(
            AclExport::new(&rules, "taxi", &twice).err(),
            Some(ExportError::DuplicateUser("b".to_owned()))
        );
    }

    #[test]
    fn the_conf_has_the_listener_the_identity_and_the_acl() {
        let mut config = Config::default();
        config.tls.client_ca.push(PathBuf::from("certs/new-ca.pem"));
        let text = mosquitto_conf(&config, &MosquittoFiles::default()).expect("conf");
        for line in [
            "acl_file /etc/mosquitto/taxi-fleet.acl",
            "persistence true",
            "persistence_location /var/lib/mosquitto/",
            "listener 8883 0.0.0.0",
            "certfile certs/dev/server.pem",
            "keyfile certs/dev/server.key",
            "cafile certs/dev/ca.pem",
            "crlfile certs/dev/crl.pem",
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
            "max_inflight_messages 100",
            "max_packet_size 262144",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(
            text.contains("append it to the cafile above: certs/new-ca.pem"),
            "{text}"
        );
        // The listener's settings come after the listener line.
        let at = |needle: &str| text.find(needle).expect(needle);
        assert!(at("listener 8883") < at("require_certificate true"));
        assert!(!text.contains("max_keepalive"), "{text}");
    }
}
