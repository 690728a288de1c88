//! Schema migrations: the numbered files of `migrations/`, embedded in the
//! binary, applied in order at start, in one transaction together with their
//! rows in `schema_migrations` (version, name and the SHA-256 of the SQL). A
//! migration that has run is never edited; a new one follows it. A database
//! whose recorded migrations differ from the binary's, or that holds a
//! migration the binary does not know (a newer ChainCore migrated it), is
//! refused rather than written to.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient};

/// (version, name, SQL) of every migration, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_init",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_indexes",
        include_str!("../../migrations/0002_indexes.sql"),
    ),
];

/// Why the database's schema cannot be used by this binary.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("PostgreSQL: {}", super::describe_postgres_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) recorded in schema_migrations differs from this binary's (checksum {recorded}, expected {expected}): the database was migrated by another build; refusing to use it")]
    Changed {
        version: i32,
        name: String,
        recorded: String,
        expected: String,
    },
    #[error("the database holds migration {version} ({name}), unknown to this binary: it was migrated by a newer ChainCore; refusing to use it")]
    Newer { version: i32, name: String },
    #[error("the database lacks migration {version} ({name}): start a node of this version with --postgres-url once to apply it (this command never changes the schema)")]
    Pending { version: i32, name: &'static str },
    #[error("the database has no ChainCore schema (no schema_migrations table): start a node with --postgres-url first")]
    NoSchema,
}

/// Hex SHA-256 of a migration's SQL, as recorded in `schema_migrations`.
pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// A row of `schema_migrations`: version, name, checksum (`None` when an
/// older ChainCore recorded it, before checksums).
type Applied = (i32, String, Option<String>);

async fn applied(
    client: &impl GenericClient,
    with_checksum: bool,
) -> Result<Vec<Applied>, MigrateError> {
    let sql = if with_checksum {
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
    } else {
        "SELECT version, name, NULL::text FROM schema_migrations ORDER BY version"
    };
    Ok(client
        .query(sql, &[])
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Checks every recorded migration against the binary's. Returns the
/// versions that a row without a checksum matched by name (to be recorded).
fn compare(applied: &[Applied]) -> Result<Vec<i32>, MigrateError> {
    let mut unrecorded = Vec::new();
    for (version, name, recorded) in applied {
        let Some((_, known_name, sql)) = MIGRATIONS.iter().find(|(v, _, _)| v == version) else {
            return Err(MigrateError::Newer {
                version: *version,
                name: name.clone(),
            });
        };
        let expected = checksum(sql);
        match recorded {
            Some(recorded) if *recorded == expected => {}
            None if name == known_name => unrecorded.push(*version),
            _ => {
                return Err(MigrateError::Changed {
                    version: *version,
                    name: name.clone(),
                    recorded: recorded
                        .clone()
                        .unwrap_or_else(|| format!("none, name {name}")),
                    expected,
                })
            }
        }
    }
    Ok(unrecorded)
}

/// Applies every migration not yet recorded, after checking the recorded
/// ones. Returns how many ran.
pub async fn migrate(client: &mut Client) -> Result<usize, MigrateError> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );
         ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum TEXT;
         LOCK TABLE schema_migrations IN EXCLUSIVE MODE",
    )
    .await?;
    let recorded = applied(&tx, true).await?;
    for version in compare(&recorded)? {
        let (_, _, sql) = MIGRATIONS
            .iter()
            .find(|(v, _, _)| *v == version)
            .expect("compare returns known versions");
        tx.execute(
            "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
            &[&version, &checksum(sql)],
        )
        .await?;
    }
    let mut ran = 0;
    for (version, name, sql) in MIGRATIONS {
        if recorded.iter().any(|(v, _, _)| v == version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[version, name, &checksum(sql)],
        )
        .await?;
        ran += 1;
    }
    tx.commit().await?;
    Ok(ran)
}

/// Read-only: checks that the database holds exactly this binary's
/// migrations (for `mirror verify`, which may run on a replica).
pub async fn check(client: &impl GenericClient) -> Result<(), MigrateError> {
    let columns: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'schema_migrations'",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    if columns.is_empty() {
        return Err(MigrateError::NoSchema);
    }
    let recorded = applied(client, columns.iter().any(|c| c == "checksum")).await?;
    compare(&recorded)?;
    if let Some((version, name, _)) = MIGRATIONS
        .iter()
        .find(|(v, _, _)| !recorded.iter().any(|(r, _, _)| r == v))
    {
        return Err(MigrateError::Pending {
            version: *version,
            name,
        });
    }
    Ok(())
}
