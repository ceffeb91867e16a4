//! Query parameters, checked: each report names the parameters it takes, anything else is a
//! 400 naming it, and each value is parsed by its kind (instants, days, ids, limits).

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::Timestamp;

use super::error::ApiError;

/// The parameters of one request.
#[derive(Clone, Debug)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Parses `query`, allowing only `allowed` names (plus `limit` and `cursor`).
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut values = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let name = name.into_owned();
            if !allowed.contains(&name.as_str()) && name != "limit" && name != "cursor" {
                let mut known: Vec<&str> = allowed.to_vec();
                known.extend(["limit", "cursor"]);
                return Err(ApiError::bad(
                    &name,
                    format!(
                        "unknown parameter (this report takes: {})",
                        known.join(", ")
                    ),
                ));
            }
            if values.insert(name.clone(), value.into_owned()).is_some() {
                return Err(ApiError::bad(&name, "given more than once"));
            }
        }
        Ok(Params { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The parameters other than `cursor` and `limit`, in a fixed order: what a cursor is
    /// bound to.
    pub fn filters(&self) -> String {
        self.values
            .iter()
            .filter(|(k, _)| *k != "cursor" && *k != "limit")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The query string with `cursor` set to `cursor`.
    pub fn with_cursor(&self, cursor: &str) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.values {
            if k != "cursor" {
                out.append_pair(k, v);
            }
        }
        out.append_pair("cursor", cursor);
        out.finish()
    }

    /// Every parameter in a fixed order: the cache key of a page.
    pub fn canonical(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.values {
            out.append_pair(k, v);
        }
        out.finish()
    }

    /// An instant: RFC 3339 (`2026-06-10T08:00:00Z`, `...+02:00`).
    pub fn timestamp(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<Timestamp>().map_err(|_| {
                    ApiError::bad(
                        name,
                        format!("{v:?} is not an RFC 3339 instant (e.g. 2026-06-10T08:00:00Z)"),
                    )
                })
            })
            .transpose()
    }

    /// A calendar day: `YYYY-MM-DD`.
    pub fn date(&self, name: &str) -> Result<Option<Date>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<Date>()
                    .map_err(|_| ApiError::bad(name, format!("{v:?} is not a day (YYYY-MM-DD)")))
            })
            .transpose()
    }

    /// An id of the platform (taxi, tour, order): 1 to 128 of `A-Z a-z 0-9 _ . : -`.
    pub fn id(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.get(name)
            .map(|v| check_id(name, v).map(|()| v.to_owned()))
            .transpose()
    }

    /// One of `choices`.
    pub fn choice(&self, name: &str, choices: &[&str]) -> Result<Option<String>, ApiError> {
        self.get(name)
            .map(|v| {
                if choices.contains(&v) {
                    Ok(v.to_owned())
                } else {
                    Err(ApiError::bad(
                        name,
                        format!("{v:?} is not one of {}", choices.join(", ")),
                    ))
                }
            })
            .transpose()
    }

    /// A number in `range`.
    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<Option<f64>, ApiError> {
        self.get(name)
            .map(|v| match v.parse::<f64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                Ok(_) => Err(ApiError::unprocessable(
                    name,
                    format!("{v} is out of range ({} to {})", range.start(), range.end()),
                )),
                Err(_) => Err(ApiError::bad(name, format!("{v:?} is not a number"))),
            })
            .transpose()
    }

    /// `limit`, 1 to `max` (default `default`).
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                Ok(_) => Err(ApiError::unprocessable(
                    "limit",
                    format!("must be 1 to {max}"),
                )),
                Err(_) => Err(ApiError::bad("limit", format!("{v:?} is not a number"))),
            },
        }
    }
}

/// Checks an id: 1 to 128 of `A-Z a-z 0-9 _ . : -`.
pub fn check_id(name: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            name,
            format!("{value:?} is not an id (1 to 128 of A-Z a-z 0-9 _ . : -)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_repeated_parameters_are_named() {
        let e = Params::parse(Some("from=x&frmo=y"), &["from"]).unwrap_err();
        assert_eq!(e.parameter.as_deref(), Some("frmo"));
        let e = Params::parse(Some("from=x&from=y"), &["from"]).unwrap_err();
        assert_eq!(e.parameter.as_deref(), Some("from"));
    }

    #[test]
    fn values_are_parsed_by_kind() {
        let p = Params::parse(
            Some("from=2026-06-10T08:00:00%2B02:00&day=2026-06-10&taxi=taxi-7&limit=5"),
            &["from", "day", "taxi"],
        )
        .unwrap();
        assert_eq!(
            p.timestamp("from").unwrap().unwrap().to_string(),
            "2026-06-10T06:00:00Z"
        );
        assert_eq!(p.date("day").unwrap().unwrap().to_string(), "2026-06-10");
        assert_eq!(p.id("taxi").unwrap().as_deref(), Some("taxi-7"));
        assert_eq!(p.limit(100, 1000).unwrap(), 5);
        assert_eq!(
            p.filters(),
            "day=2026-06-10&from=2026-06-10T08:00:00+02:00&taxi=taxi-7"
        );

        let p = Params::parse(Some("from=yesterday&taxi=a/b&limit=0"), &["from", "taxi"]).unwrap();
        assert_eq!(p.timestamp("from").unwrap_err().status, 400);
        assert_eq!(p.id("taxi").unwrap_err().status, 400);
        assert_eq!(p.limit(100, 1000).unwrap_err().status, 422);
    }
}
