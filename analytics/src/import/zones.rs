//! The TLC taxi zone lookup table (`taxi_zone_lookup.csv`: `LocationID,Borough,Zone,
//! service_zone`), which names the zone ids of the current layout. Loaded whole: it has 265
//! rows. A zone id the table does not list gets no names; that is not an error.

use std::path::Path;

use anyhow::{bail, Context};

/// Borough and zone name per TLC LocationID.
#[derive(Clone, Debug, Default)]
pub struct ZoneLookup {
    names: Vec<Option<(String, String)>>,
}

impl ZoneLookup {
    /// Reads `path`; errors name the file (and the line).
    pub fn load(path: &Path) -> anyhow::Result<ZoneLookup> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("taxi zone lookup {}: cannot open it", path.display()))?;
        ZoneLookup::read(file).with_context(|| format!("taxi zone lookup {}", path.display()))
    }

    fn read(input: impl std::io::Read) -> anyhow::Result<ZoneLookup> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
        let header: Vec<String> = reader
            .headers()
            .context("reading the header")?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase())
            .collect();
        let at = |name: &str| header.iter().position(|h| h == name);
        let (Some(id), Some(borough), Some(zone)) = (at("locationid"), at("borough"), at("zone"))
        else {
            bail!(
                "the header {:?} is not the TLC's (expected \"LocationID\",\"Borough\",\"Zone\",\"service_zone\")",
                header.join(",")
            );
        };
        let mut names: Vec<Option<(String, String)>> = Vec::new();
        for record in reader.records() {
            let record = record.context("reading a row")?;
            let line = record.position().map_or(0, |p| p.line());
            let field = |i: usize| record.get(i).unwrap_or("").trim();
            let location: usize = field(id)
                .parse()
                .ok()
                .filter(|&n| n <= 100_000)
                .with_context(|| {
                    format!("line {line}: LocationID {:?} is not a zone id", field(id))
                })?;
            if names.len() <= location {
                names.resize(location + 1, None);
            }
            names[location] = Some((field(borough).to_owned(), field(zone).to_owned()));
        }
        if names.iter().all(Option::is_none) {
            bail!("it has no zones");
        }
        Ok(ZoneLookup { names })
    }

    /// Borough and zone name of `location_id`, if listed.
    pub fn get(&self, location_id: i32) -> Option<(&str, &str)> {
        let index = usize::try_from(location_id).ok()?;
        self.names
            .get(index)?
            .as_ref()
            .map(|(b, z)| (b.as_str(), z.as_str()))
    }

    /// How many zones are listed.
    pub fn len(&self) -> usize {
        self.names.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tlc_table() {
        let table = "\"LocationID\",\"Borough\",\"Zone\",\"service_zone\"\n\
                     1,\"EWR\",\"Newark Airport\",\"EWR\"\n\
                     132,\"Queens\",\"JFK Airport\",\"Airports\"\n";
        let zones = ZoneLookup::read(table.as_bytes()).unwrap();
        assert_eq!(zones.len(), 2);
        assert_eq!(zones.get(132), Some(("Queens", "JFK Airport")));
        assert_eq!(zones.get(2), None);
        assert_eq!(zones.get(-1), None);
        assert_eq!(zones.get(9999), None);
    }

    #[test]
    fn a_wrong_table_is_an_error() {
        let error = ZoneLookup::read("a,b\n1,2\n".as_bytes()).unwrap_err();
        assert!(format!("{error:#}").contains("LocationID"), "{error:#}");
        let error = ZoneLookup::read("LocationID,Borough,Zone\nx,a,b\n".as_bytes()).unwrap_err();
        assert!(format!("{error:#}").contains("line 2"), "{error:#}");
    }
}
