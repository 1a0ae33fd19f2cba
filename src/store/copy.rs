//! `portcullis db copy`: every persistent table from one store into another (SQLite to
//! PostgreSQL when an instance outgrows one machine, or back), in one target transaction with
//! row counts checked before it commits. Rate-limit counters and the SQLite revocation log
//! are not copied: they describe the last minutes of the old instance, not its state.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Location, StoreError, sqlite};

/// What a column holds, and so how each store spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uuid,
    Text,
    Bytes,
    /// PostgreSQL `bigint` / `bigserial`.
    Int,
    Bool,
    Time,
    /// PostgreSQL `jsonb`, SQLite JSON text.
    Json,
    /// A sealed secret: a JSON string in PostgreSQL's `jsonb`, the bare text in SQLite.
    SealedJson,
    /// PostgreSQL's `user_role` enum, text in SQLite.
    Role,
    /// PostgreSQL `inet`, text in SQLite.
    Inet,
}

/// One copied table: its columns in insertion order (parents before children).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
}

use Kind::*;

/// Every persistent table, parents first.
const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("id", Uuid),
            ("email", Text),
            ("email_canonical", Text),
            ("role", Role),
            ("hashed_password", Text),
            ("is_active", Bool),
            ("created_at", Time),
            ("updated_at", Time),
        ],
    },
    Table {
        name: "sessions",
        columns: &[
            ("id", Uuid),
            ("user_id", Uuid),
            ("secret", Bytes),
            ("created_at", Time),
            ("last_used_at", Time),
            ("expires_at", Time),
            ("revoked_at", Time),
            ("user_agent", Text),
            ("ip", Inet),
            ("auth_time", Time),
            ("amr", Text),
        ],
    },
    Table {
        name: "refresh_tokens",
        // `replaced_by` points at a newer row of the same table: set in a second pass.
        columns: &[
            ("id", Uuid),
            ("token_hash", Bytes),
            ("token_family", Uuid),
            ("user_id", Uuid),
            ("expires_at", Time),
            ("revoked_at", Time),
            ("used_at", Time),
            ("created_at", Time),
        ],
    },
    Table {
        name: "oidc_states",
        columns: &[
            ("state_hash", Bytes),
            ("provider", Text),
            ("nonce", Text),
            ("pkce_verifier", Text),
            ("redirect_to", Text),
            ("created_at", Time),
            ("for_browser", Bool),
        ],
    },
    Table {
        name: "oidc_identities",
        columns: &[
            ("provider", Text),
            ("subject", Text),
            ("user_id", Uuid),
            ("created_at", Time),
        ],
    },
    Table {
        name: "oidc_login_codes",
        columns: &[
            ("code_hash", Bytes),
            ("user_id", Uuid),
            ("expires_at", Time),
            ("created_at", Time),
        ],
    },
    Table {
        name: "audit_events",
        columns: &[
            ("id", Int),
            ("time", Time),
            ("event", Text),
            ("user_id", Uuid),
            ("actor_id", Uuid),
            ("client_ip", Inet),
            ("user_agent", Text),
            ("request_id", Text),
            ("detail", Json),
        ],
    },
    Table {
        name: "acme_accounts",
        columns: &[
            ("directory_url", Text),
            ("credentials", SealedJson),
            ("created_at", Time),
        ],
    },
    Table {
        name: "acme_challenges",
        columns: &[
            ("token", Text),
            ("key_authorization", Text),
            ("expires_at", Time),
        ],
    },
    Table {
        name: "acme_certificates",
        columns: &[
            ("domains", Text),
            ("cert_pem", Text),
            ("key_pem", Text),
            ("not_after", Time),
            ("updated_at", Time),
        ],
    },
    Table {
        name: "acme_leases",
        columns: &[("domains", Text), ("locked_until", Time)],
    },
];

/// One value in transit, store-neutral.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Uuid(Uuid),
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
    Bool(bool),
    Time(DateTime<Utc>),
    Json(serde_json::Value),
}

/// A table's rows, and the `(id, replaced_by)` links of refresh tokens.
struct Data {
    tables: Vec<Vec<Vec<Value>>>,
    links: Vec<(Uuid, Uuid)>,
}

/// What was copied: `(table, rows)` in copy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Rows per table, each checked in the target before the commit.
    pub tables: Vec<(String, u64)>,
}

/// Copies every persistent table from `from` into `to`. The target is created and migrated
/// first and must hold no row; the source must be at the same schema version. One target
/// transaction: on any failure nothing is written.
pub async fn copy_database(from: &str, to: &str) -> Result<CopyReport, StoreError> {
    let (source, target) = (Location::parse(from)?, Location::parse(to)?);
    if source == target {
        return Err(StoreError::BadUrl(
            "--from and --to name the same database".into(),
        ));
    }
    if let Location::Sqlite(path) = &source
        && !path.exists()
    {
        return Err(StoreError::BadUrl(format!(
            "{} does not exist",
            path.display()
        )));
    }
    super::ensure_database(to).await?;
    super::migrate(to).await?;
    let (from_version, to_version) = (version(&source).await?, version(&target).await?);
    if from_version != to_version {
        return Err(StoreError::Db(format!(
            "the source is at schema version {from_version}, the target at {to_version}: run \
             `portcullis migrate` against the source first"
        )));
    }
    let data = match &source {
        Location::Postgres(url) => read_postgres(url).await?,
        Location::Sqlite(path) => read_sqlite(path.clone()).await?,
    };
    let counts: Vec<u64> = data.tables.iter().map(|rows| rows.len() as u64).collect();
    match &target {
        Location::Postgres(url) => write_postgres(url, &data).await?,
        Location::Sqlite(path) => write_sqlite(path.clone(), data).await?,
    }
    Ok(CopyReport {
        tables: TABLES
            .iter()
            .zip(counts)
            .map(|(t, n)| (t.name.to_string(), n))
            .collect(),
    })
}

/// The newest applied migration of a store.
async fn version(at: &Location) -> Result<i64, StoreError> {
    const Q: &str = "SELECT coalesce(max(version), 0) FROM refinery_schema_history";
    match at {
        Location::Postgres(url) => {
            let client = super::postgres::connect(url).await?;
            let v: i32 = client.query_one(Q, &[]).await?.try_get(0)?;
            Ok(i64::from(v))
        }
        Location::Sqlite(path) => {
            let path = path.clone();
            blocking(move || {
                let conn = rusqlite::Connection::open(&path)?;
                Ok(conn.query_row(Q, [], |r| r.get(0))?)
            })
            .await
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Db(format!("copy task: {e}")))?
}

fn select_list(table: &Table, postgres: bool) -> String {
    table
        .columns
        .iter()
        .map(|(name, kind)| match (postgres, kind) {
            (true, Role) => format!("{name}::text"),
            (true, Inet) => format!("host({name})"),
            _ => name.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows come out in primary-key order, so a copy of a copy is the same file.
fn order_by(table: &Table) -> &'static str {
    table.columns[0].0
}

async fn read_postgres(url: &str) -> Result<Data, StoreError> {
    let mut client = super::postgres::connect(url).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut tables = Vec::new();
    for table in TABLES {
        let rows = tx
            .query(
                &format!(
                    "SELECT {} FROM {} ORDER BY {}",
                    select_list(table, true),
                    table.name,
                    order_by(table)
                ),
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(table.columns.len());
            for (i, (_, kind)) in table.columns.iter().enumerate() {
                values.push(match kind {
                    Uuid => opt(row.try_get::<_, Option<uuid::Uuid>>(i)?, Value::Uuid),
                    Text | Role | Inet => opt(row.try_get::<_, Option<String>>(i)?, Value::Text),
                    Bytes => opt(row.try_get::<_, Option<Vec<u8>>>(i)?, Value::Bytes),
                    Int => opt(row.try_get::<_, Option<i64>>(i)?, Value::Int),
                    Bool => opt(row.try_get::<_, Option<bool>>(i)?, Value::Bool),
                    Time => opt(row.try_get::<_, Option<DateTime<Utc>>>(i)?, Value::Time),
                    Json => opt(row.try_get::<_, Option<serde_json::Value>>(i)?, Value::Json),
                    SealedJson => opt(
                        row.try_get::<_, Option<serde_json::Value>>(i)?,
                        |v| match v {
                            serde_json::Value::String(s) => Value::Text(s),
                            other => Value::Text(other.to_string()),
                        },
                    ),
                });
            }
            out.push(values);
        }
        tables.push(out);
    }
    let links = tx
        .query(
            "SELECT id, replaced_by FROM refresh_tokens WHERE replaced_by IS NOT NULL ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    tx.commit().await?;
    Ok(Data { tables, links })
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    v.map_or(Value::Null, f)
}

async fn read_sqlite(path: PathBuf) -> Result<Data, StoreError> {
    blocking(move || {
        let mut conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let tx = conn.transaction()?;
        let mut tables = Vec::new();
        for table in TABLES {
            let mut stmt = tx.prepare(&format!(
                "SELECT {} FROM {} ORDER BY {}",
                select_list(table, false),
                table.name,
                order_by(table)
            ))?;
            let rows = stmt
                .query_map([], |row| {
                    let mut values = Vec::with_capacity(table.columns.len());
                    for (i, (_, kind)) in table.columns.iter().enumerate() {
                        values.push(match kind {
                            Uuid => opt(row.get::<_, Option<uuid::Uuid>>(i)?, Value::Uuid),
                            Text | Role | Inet | SealedJson => {
                                opt(row.get::<_, Option<String>>(i)?, Value::Text)
                            }
                            Bytes => opt(row.get::<_, Option<Vec<u8>>>(i)?, Value::Bytes),
                            Int => opt(row.get::<_, Option<i64>>(i)?, Value::Int),
                            Bool => opt(row.get::<_, Option<bool>>(i)?, Value::Bool),
                            Time => match row.get::<_, Option<i64>>(i)? {
                                Some(us) => Value::Time(sqlite::time(us)?),
                                None => Value::Null,
                            },
                            Json => opt(row.get::<_, Option<serde_json::Value>>(i)?, Value::Json),
                        });
                    }
                    Ok(values)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tables.push(rows);
        }
        let links = tx
            .prepare(
                "SELECT id, replaced_by FROM refresh_tokens WHERE replaced_by IS NOT NULL ORDER BY id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Data { tables, links })
    })
    .await
}

/// The target must hold no row in any copied table.
fn refuse_non_empty(table: &str, rows: i64) -> Result<(), StoreError> {
    if rows > 0 {
        return Err(StoreError::Db(format!(
            "the target is not empty: {table} has {rows} rows (copy into a new database)"
        )));
    }
    Ok(())
}

/// Row counts in the target must equal the source's before the commit.
fn check_count(table: &str, expected: usize, found: i64) -> Result<(), StoreError> {
    if found != expected as i64 {
        return Err(StoreError::Db(format!(
            "{table}: copied {expected} rows but the target holds {found}; nothing was written"
        )));
    }
    Ok(())
}

async fn write_postgres(url: &str, data: &Data) -> Result<(), StoreError> {
    let mut client = super::postgres::connect(url).await?;
    let tx = client.transaction().await?;
    for table in TABLES {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {}", table.name), &[])
            .await?
            .try_get(0)?;
        refuse_non_empty(table.name, n)?;
    }
    for (table, rows) in TABLES.iter().zip(&data.tables) {
        let placeholders: Vec<String> = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| match kind {
                Role => format!("${}::text::user_role", i + 1),
                Inet => format!("${}::text::inet", i + 1),
                _ => format!("${}", i + 1),
            })
            .collect();
        let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
        let stmt = tx
            .prepare(&format!(
                "INSERT INTO {} ({}) VALUES ({})",
                table.name,
                names.join(", "),
                placeholders.join(", ")
            ))
            .await?;
        for row in rows {
            let params: Vec<Box<dyn ToSql + Sync + Send>> = row
                .iter()
                .zip(table.columns)
                .map(|(v, (_, kind))| pg_param(v, *kind))
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            tx.execute(&stmt, &refs).await?;
        }
    }
    for (id, next) in &data.links {
        tx.execute(
            "UPDATE refresh_tokens SET replaced_by = $2 WHERE id = $1",
            &[id, next],
        )
        .await?;
    }
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('audit_events', 'id'),
                       coalesce((SELECT max(id) FROM audit_events), 0) + 1, false)",
    )
    .await?;
    for (table, rows) in TABLES.iter().zip(&data.tables) {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {}", table.name), &[])
            .await?
            .try_get(0)?;
        check_count(table.name, rows.len(), n)?;
    }
    tx.commit().await?;
    Ok(())
}

fn pg_param(v: &Value, kind: Kind) -> Box<dyn ToSql + Sync + Send> {
    match (v, kind) {
        (Value::Null, Uuid) => Box::new(None::<uuid::Uuid>),
        (Value::Null, Bytes) => Box::new(None::<Vec<u8>>),
        (Value::Null, Int) => Box::new(None::<i64>),
        (Value::Null, Bool) => Box::new(None::<bool>),
        (Value::Null, Time) => Box::new(None::<DateTime<Utc>>),
        (Value::Null, Json | SealedJson) => Box::new(None::<serde_json::Value>),
        (Value::Null, Text | Role | Inet) => Box::new(None::<String>),
        (Value::Text(s), SealedJson) => Box::new(serde_json::Value::String(s.clone())),
        (Value::Uuid(u), _) => Box::new(*u),
        (Value::Text(s), _) => Box::new(s.clone()),
        (Value::Bytes(b), _) => Box::new(b.clone()),
        (Value::Int(i), _) => Box::new(*i),
        (Value::Bool(b), _) => Box::new(*b),
        (Value::Time(t), _) => Box::new(*t),
        (Value::Json(j), _) => Box::new(j.clone()),
    }
}

fn sqlite_param(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Uuid(u) => V::Blob(u.as_bytes().to_vec()),
        Value::Text(s) => V::Text(s.clone()),
        Value::Bytes(b) => V::Blob(b.clone()),
        Value::Int(i) => V::Integer(*i),
        Value::Bool(b) => V::Integer(i64::from(*b)),
        Value::Time(t) => V::Integer(sqlite::micros(*t)),
        Value::Json(j) => V::Text(j.to_string()),
    }
}

async fn write_sqlite(path: PathBuf, data: Data) -> Result<(), StoreError> {
    blocking(move || write_sqlite_file(&path, &data)).await
}

fn write_sqlite_file(path: &Path, data: &Data) -> Result<(), StoreError> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for table in TABLES {
        let n: i64 = tx.query_row(&format!("SELECT count(*) FROM {}", table.name), [], |r| {
            r.get(0)
        })?;
        refuse_non_empty(table.name, n)?;
    }
    for (table, rows) in TABLES.iter().zip(&data.tables) {
        let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let mut stmt = tx.prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            names.join(", "),
            marks.join(", ")
        ))?;
        for row in rows {
            stmt.execute(rusqlite::params_from_iter(row.iter().map(sqlite_param)))?;
        }
    }
    {
        let mut stmt = tx.prepare("UPDATE refresh_tokens SET replaced_by = ?2 WHERE id = ?1")?;
        for (id, next) in &data.links {
            stmt.execute(rusqlite::params![id, next])?;
        }
    }
    for (table, rows) in TABLES.iter().zip(&data.tables) {
        let n: i64 = tx.query_row(&format!("SELECT count(*) FROM {}", table.name), [], |r| {
            r.get(0)
        })?;
        check_count(table.name, rows.len(), n)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_persistent_table_of_both_schemas_is_copied() {
        // The tables each migration set creates, minus what is deliberately left behind.
        let left_behind = [
            "login_failures",
            "revocation_log",
            "refinery_schema_history",
        ];
        for dir in ["migrations/postgres", "migrations/sqlite"] {
            let mut created = Vec::new();
            for entry in std::fs::read_dir(dir).unwrap() {
                let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                for line in sql.lines() {
                    if let Some(rest) = line.strip_prefix("CREATE TABLE ") {
                        created.push(rest.split_whitespace().next().unwrap().to_string());
                    }
                }
            }
            created.retain(|t| !left_behind.contains(&t.as_str()));
            created.sort();
            let mut copied: Vec<String> = TABLES.iter().map(|t| t.name.to_string()).collect();
            copied.sort();
            assert_eq!(created, copied, "{dir}");
        }
    }

    #[test]
    fn values_keep_their_meaning_on_the_way_into_sqlite() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(
            sqlite_param(&Value::Time(t)),
            rusqlite::types::Value::Integer(1_700_000_000_123_456)
        );
        assert_eq!(
            sqlite_param(&Value::Bool(true)),
            rusqlite::types::Value::Integer(1)
        );
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            sqlite_param(&Value::Uuid(id)),
            rusqlite::types::Value::Blob(id.as_bytes().to_vec())
        );
    }
}
