//! The schema: the SQL migrations in `bridge/migrations/`, applied at start-up.
//!
//! Several bridges may start at once; a session advisory lock lets one migrate while the
//! others wait, then find nothing left to do.

use tokio_postgres::Client;

use super::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating ("taxi" "mig").
const MIGRATION_LOCK: i64 = 0x7461_7869_006d_6967;

/// Applies the migrations not applied yet. Returns how many were applied.
pub(super) async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(client)
        .await;
    // On a broken connection the lock went with the session.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = result?;
    unlocked?;
    Ok(report.applied_migrations().len())
}
