//! Store errors, and whether retrying (on a new connection) can help.

use std::error::Error as _;

use tokio_postgres::error::SqlState;

/// Why a store operation failed. The message includes the server's (`db error: ERROR: ...`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("PostgreSQL: {}", chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("schema migration: {}", chain(.0))]
    Migration(#[from] refinery::Error),
    /// A row needed a day partition that went away after it was checked (dropped by
    /// retention on another connection); the next attempt creates it again.
    #[error("no partition for a row's day: {}", chain(.0))]
    MissingPartition(tokio_postgres::Error),
}

/// An error and its causes, `: `-separated (tokio-postgres shows only "db error" otherwise).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl StoreError {
    /// True when the same operation may succeed later: the connection or server went away,
    /// the server is starting or shutting down, or it lost a race (serialization failure,
    /// deadlock, lock timeout, resource shortage). After a retryable error check
    /// [`Store::is_closed`](super::Store::is_closed) and connect again if needed. False for
    /// errors that repeat on every attempt (a bad URL, a password, a schema mismatch).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => postgres_retryable(e),
            StoreError::MissingPartition(_) => true,
            StoreError::Migration(e) => {
                let mut source = e.source();
                while let Some(s) = source {
                    if let Some(pg) = s.downcast_ref::<tokio_postgres::Error>() {
                        return postgres_retryable(pg);
                    }
                    if s.is::<std::io::Error>() {
                        return true;
                    }
                    source = s.source();
                }
                false
            }
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            StoreError::Postgres(e) | StoreError::MissingPartition(e) => e.code(),
            StoreError::Migration(_) => None,
        }
    }
}

fn postgres_retryable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return retryable_code(code);
    }
    if e.is_closed() {
        return true;
    }
    // Connect and I/O errors carry the io::Error; timeouts and protocol confusion do not, and
    // a new connection helps with those too.
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    let text = e.to_string();
    text.starts_with("timeout") || text.starts_with("unexpected message")
}

fn retryable_code(code: &SqlState) -> bool {
    let class = &code.code()[..2];
    matches!(
        class,
        // connection exception, insufficient resources, system error (I/O)
        "08" | "53" | "58"
    ) || [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::QUERY_CANCELED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::IDLE_SESSION_TIMEOUT,
        SqlState::READ_ONLY_SQL_TRANSACTION,
    ]
    .contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_include_the_cause() {
        let e = match tokio_postgres::connect("postgres://127.0.0.1:1/x", tokio_postgres::NoTls)
            .await
        {
            Err(e) => StoreError::from(e),
            Ok(_) => return,
        };
        assert!(e.is_retryable());
        let text = e.to_string();
        assert!(
            text.starts_with("PostgreSQL: error connecting to server: "),
            "{text}"
        );
        assert!(
            text.len() > "PostgreSQL: error connecting to server: ".len(),
            "{text}"
        );
    }

    #[test]
    fn codes() {
        assert!(retryable_code(&SqlState::ADMIN_SHUTDOWN));
        assert!(retryable_code(&SqlState::CONNECTION_FAILURE));
        assert!(retryable_code(&SqlState::TOO_MANY_CONNECTIONS));
        assert!(retryable_code(&SqlState::DISK_FULL));
        assert!(retryable_code(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!retryable_code(&SqlState::UNIQUE_VIOLATION));
        assert!(!retryable_code(&SqlState::UNDEFINED_TABLE));
        assert!(!retryable_code(&SqlState::INVALID_PASSWORD));
    }
}
