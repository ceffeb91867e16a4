//! Replay: reprocess archived raw messages of a time range into PostgreSQL.
//!
//! Lists the archive objects whose hour overlaps the range, decodes every raw message
//! received in it, validates it as of its receive time and writes it through the same store
//! as live traffic. Keys make it idempotent: replaying twice, or over data already stored,
//! changes nothing. Dead letters are counted, not written again (they were recorded live).

use anyhow::Context;
use tracing::info;

use crate::archive::object::Class;
use crate::archive::s3;
use crate::config::{ArchiveConfig, Config};
use crate::pipeline::connect;
use crate::record::Record;
use crate::validate::Validator;

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub objects: u64,
    pub messages: u64,
    pub positions_inserted: u64,
    pub positions_duplicate: u64,
    pub dead_letters: u64,
}

/// Replays messages received in `[from_ms, to_ms)` of the given classes from the archive
/// described by `archive` (endpoint and credentials resolved, see [`crate::archive_endpoint`]).
pub async fn replay(
    config: &Config,
    archive: &ArchiveConfig,
    from_ms: i64,
    to_ms: i64,
    classes: &[Class],
) -> anyhow::Result<ReplayStats> {
    let client = s3::client(archive, None).await;
    let keys = s3::list_objects(
        &client,
        &archive.bucket,
        &archive.prefix,
        classes,
        from_ms,
        to_ms,
    )
    .await
    .context("listing the archive")?;
    info!(objects = keys.len(), "replaying");
    let mut store = connect(&config.postgres).await;
    store.migrate().await.context("applying migrations")?;
    let mut validator = Validator::new(config.validation.clone(), config.retention.days);
    let mut stats = ReplayStats::default();
    for (done, key) in keys.iter().enumerate() {
        let object = s3::get_object(&client, &archive.bucket, key)
            .await
            .with_context(|| format!("reading {key}"))?;
        let messages = crate::archive::object::decode_object(&object)
            .with_context(|| format!("decoding {key}"))?;
        let mut records = Vec::with_capacity(messages.len());
        for message in messages
            .iter()
            .filter(|m| (from_ms..to_ms).contains(&m.received_ms))
        {
            stats.messages += 1;
            match validator.validate(message) {
                Record::DeadLetter(_) => stats.dead_letters += 1,
                record => records.push(record),
            }
        }
        let written = store
            .write(&records)
            .await
            .with_context(|| format!("writing the records of {key}"))?;
        stats.objects += 1;
        stats.positions_inserted += written.positions_inserted;
        stats.positions_duplicate += written.positions_duplicate;
        info!(
            object = key,
            progress = format!("{}/{}", done + 1, keys.len()),
            messages = stats.messages,
            "replayed"
        );
    }
    Ok(stats)
}
