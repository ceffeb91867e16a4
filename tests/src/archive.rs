//! Reading a bridge's raw archive back from its S3 server, independently of the bridge's own
//! listing: every object of the bucket is fetched and decoded.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bridge::config::ArchiveConfig;

use crate::platform::{multiset, Sent, PROBE_TAXI};

/// An archived message and the object it came from.
#[derive(Clone, Debug)]
pub struct Archived {
    pub key: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub received_ms: i64,
}

/// Every message in every object of the bucket, object by object in key order. A bucket that
/// does not exist yet reads as empty.
pub async fn read_all(archive: &ArchiveConfig) -> Result<Vec<Archived>> {
    let client = bridge::archive::s3::client(archive, None).await;
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&archive.bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_bucket()) => {
                return Ok(Vec::new())
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "listing s3://{}: {}",
                    archive.bucket,
                    bridge::archive::s3::describe(&e)
                ))
            }
        };
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys.sort();
    let mut messages = Vec::new();
    for key in keys {
        let object = bridge::archive::s3::get_object(&client, &archive.bucket, &key).await?;
        let decoded = bridge::archive::object::decode_object(&object)
            .with_context(|| format!("decoding s3://{}/{key}", archive.bucket))?;
        messages.extend(decoded.into_iter().map(|m| Archived {
            key: key.clone(),
            topic: m.topic,
            payload: m.payload.to_vec(),
            received_ms: m.received_ms,
        }));
    }
    Ok(messages)
}

/// How often each (topic, payload) is in the archive, the probe taxi's messages left out.
pub fn archived_multiset(messages: &[Archived]) -> BTreeMap<Sent, usize> {
    let probe = format!("taxi/{PROBE_TAXI}/");
    multiset(
        messages
            .iter()
            .filter(|m| !m.topic.starts_with(&probe))
            .map(|m| Sent {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
            }),
    )
}
