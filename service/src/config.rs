//! Configuration loading: defaults, one TOML file, environment overrides.
//!
//! Layers, later ones winning: the built-in defaults, one TOML file, then environment
//! variables `<PREFIX><SECTION>__<KEY>`. Errors name the key and where the bad value came from
//! (the file's path or the environment), one line per problem.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// A value that parsed but breaks a rule: `key: why`.
    pub fn invalid(key: &str, why: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid(format!("{key}: {why}"))
    }
}

/// Loads `T` from its defaults, `file` (if given) and variables starting with `env_prefix`
/// (e.g. `BROKER_`; `<prefix>CONFIG` is left for the file path). `extra` are
/// `(key, value)` overrides applied last, such as `DATABASE_URL`.
pub fn load<T>(
    defaults: T,
    file: Option<&Path>,
    env_prefix: &str,
    extra: &[(&str, String)],
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError::Missing(file.to_owned()));
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment.merge(Env::prefixed(env_prefix).ignore(&["CONFIG"]).split("__"));
    for (key, value) in extra {
        figment = figment.merge(Serialized::default(key, value));
    }
    figment
        .extract()
        .map_err(|e| ConfigError::Invalid(describe(e)))
}

/// Loads a service's configuration like [`load`], with `DATABASE_URL` (when set) as
/// `postgres.url`, then checks the rules serde cannot with `validate`; a broken rule is
/// reported with where the configuration came from (the file, or the defaults).
pub fn load_with_database<T>(
    defaults: T,
    file: Option<&Path>,
    env_prefix: &str,
    validate: impl FnOnce(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut extra = Vec::new();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        extra.push(("postgres.url", url));
    }
    let config: T = load(defaults, file, env_prefix, &extra)?;
    let source = file
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "the defaults".to_owned());
    validate(&config).map_err(|e| ConfigError::Invalid(format!("{e} (in {source})")))?;
    Ok(config)
}

/// One line per problem, each naming the key and its source.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!(" at key `{}`", e.path.join("."))
            };
            let source = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(source) => format!(" in {source}"),
                None => e
                    .metadata
                    .as_ref()
                    .map(|m| format!(" in {}", m.name))
                    .unwrap_or_default(),
            };
            format!("invalid configuration{key}{source}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        section: Section,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Section {
        port: u16,
        name: String,
    }

    fn defaults() -> Sample {
        Sample {
            section: Section {
                port: 1,
                name: "a".into(),
            },
        }
    }

    fn with_file(text: &str) -> Result<Sample, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let path = dir.path().join("service.toml");
        std::fs::write(&path, text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        load(defaults(), Some(&path), "SETTINGS_TEST_", &[])
    }

    #[test]
    fn a_broken_rule_names_the_file_it_came_from() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("service.toml");
        std::fs::write(&path, "[section]\nport = 0\n").expect("written");
        let rule = |s: &Sample| {
            if s.section.port == 0 {
                Err(ConfigError::invalid("section.port", "must not be 0"))
            } else {
                Ok(())
            }
        };
        let error = load_with_database(defaults(), Some(&path), "SETTINGS_TEST_", rule)
            .expect_err("port 0 breaks the rule")
            .to_string();
        assert_eq!(
            error,
            format!("section.port: must not be 0 (in {})", path.display())
        );
        assert!(load_with_database(defaults(), None, "SETTINGS_TEST_", rule).is_ok());
    }

    #[test]
    fn file_overrides_defaults() {
        let loaded = with_file("[section]\nport = 7\n").expect("valid");
        assert_eq!(loaded.section.port, 7);
        assert_eq!(loaded.section.name, "a");
    }

    #[test]
    fn errors_name_key_and_file() {
        let text = with_file("[section]\nport = \"x\"\n")
            .expect_err("bad type")
            .to_string();
        assert!(text.contains("section.port"), "{text}");
        assert!(text.contains("service.toml"), "{text}");
        let text = with_file("[section]\nprot = 1\n")
            .expect_err("unknown key")
            .to_string();
        assert!(text.contains("prot"), "{text}");
    }

    #[test]
    fn extra_overrides_win() {
        let loaded = load(
            defaults(),
            None,
            "SETTINGS_TEST_",
            &[("section.name", "z".into())],
        )
        .expect("valid");
        assert_eq!(loaded.section.name, "z");
    }

    #[test]
    fn missing_file_is_reported() {
        let error = load(
            defaults(),
            Some(Path::new("/nonexistent/x.toml")),
            "S_",
            &[],
        )
        .expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/x.toml"));
    }
}
