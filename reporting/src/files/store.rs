//! Writing one object of the file area as its bytes arrive, in bounded memory.
//!
//! An [`ObjectSink`] keeps what it is given in memory up to the multipart threshold; if the
//! object ends before that, it is sent with one PUT. Past the threshold it becomes a
//! multipart upload (`object_store`'s `WriteMultipart`) with parts of the threshold's size,
//! at most [`PARTS_IN_FLIGHT`] being sent at once: memory is about (1 + that) parts, however
//! large the object. The object appears only when [`ObjectSink::finish`] completes it (S3
//! shows an object once it is whole); [`ObjectSink::abort`] leaves nothing behind.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Parts of one upload sent at once.
pub const PARTS_IN_FLIGHT: usize = 2;

/// One object being written.
pub struct ObjectSink {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    threshold: usize,
    buffer: BytesMut,
    multipart: Option<WriteMultipart>,
    written: u64,
}

impl ObjectSink {
    pub fn new(store: Arc<dyn ObjectStore>, key: ObjectPath, threshold: usize) -> ObjectSink {
        ObjectSink {
            store,
            key,
            threshold,
            buffer: BytesMut::new(),
            multipart: None,
            written: 0,
        }
    }

    pub fn key(&self) -> &ObjectPath {
        &self.key
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`; waits while the upload has its parts in flight.
    pub async fn write(&mut self, bytes: Bytes) -> object_store::Result<()> {
        self.written += bytes.len() as u64;
        if let Some(upload) = &mut self.multipart {
            upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            upload.put(bytes);
            return Ok(());
        }
        self.buffer.extend_from_slice(&bytes);
        if self.buffer.len() > self.threshold {
            let upload = self.store.put_multipart(&self.key).await?;
            let mut upload = WriteMultipart::new_with_chunk_size(upload, self.threshold);
            upload.put(self.buffer.split().freeze());
            self.buffer = BytesMut::new();
            self.multipart = Some(upload);
        }
        Ok(())
    }

    /// Completes the object; its ETag as the store gave it.
    pub async fn finish(self) -> object_store::Result<Option<String>> {
        let result = match self.multipart {
            Some(upload) => upload.finish().await?,
            None => {
                self.store
                    .put(&self.key, PutPayload::from(self.buffer.freeze()))
                    .await?
            }
        };
        Ok(result.e_tag)
    }

    /// Drops the object: the multipart upload (if any) is aborted.
    pub async fn abort(self) {
        if let Some(upload) = self.multipart {
            if let Err(e) = upload.abort().await {
                tracing::warn!(key = %self.key, error = %e, "aborting a multipart upload failed (the store's lifecycle rule removes its parts)");
            }
        }
    }
}

/// `NotFound` is not an error when deleting.
pub async fn delete_if_present(
    store: &dyn ObjectStore,
    key: &ObjectPath,
) -> object_store::Result<()> {
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
