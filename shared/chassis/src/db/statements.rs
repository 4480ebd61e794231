//! Building statements for either backend: placeholders, chunked
//! multi-row inserts, key sets and set-based updates.

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, IntoActiveModel, Iterable,
    Statement, Value,
};

/// Bound values per statement at most (SQLite allows 32,766, PostgreSQL 65,535).
pub const MAX_BINDS: usize = 30_000;

/// Splits rows for multi-row statements of `width` values per row into
/// chunks of 256, 64, 16, 4 or 1 rows. Statements are cached per connection
/// by their text; with a few fixed sizes the texts repeat, so a batch reuses
/// prepared statements instead of parsing (and caching) one statement per
/// batch size, which had scoring hold hundreds of MiB. Larger statements
/// saved little time and cost memory in every connection's cache.
pub fn statement_chunks<T>(rows: &[T], width: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    for size in chunk_sizes(rows.len(), width) {
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// `column` among `keys`, as one condition taking one bound value however
/// many keys (a `Vec` so that callers loop the same way on both backends):
/// on PostgreSQL `column = ANY($1)` taking an array (a group's reads were
/// ~16 IN-list statements each, planned one by one), on SQLite
/// `column IN (SELECT value FROM json_each(?))` taking a JSON array (one
/// prepared statement instead of IN lists of up to 256 bound values, each
/// copied and bound by the driver; docs/performance.md, round 21).
pub fn among<C: sea_orm::ColumnTrait>(
    backend: DbBackend,
    column: C,
    keys: &[&str],
) -> Vec<sea_orm::sea_query::SimpleExpr> {
    use sea_orm::sea_query::{BinOper, Expr, ExprTrait};
    if keys.is_empty() {
        return Vec::new();
    }
    if backend == DbBackend::Postgres {
        let array: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        use sea_orm::sea_query::extension::postgres::PgFunc;
        return vec![ExprTrait::eq(
            Expr::col(column.as_column_ref()),
            PgFunc::any(Expr::val(array)),
        )];
    }
    let array = serde_json::to_string(keys).expect("a list of strings is always JSON");
    vec![Expr::col(column.as_column_ref()).binary(
        BinOper::In,
        Expr::cust_with_values("(SELECT value FROM json_each(?))", [array]),
    )]
}

/// The sizes `statement_chunks` cuts `rows` rows into.
fn chunk_sizes(mut rows: usize, width: usize) -> Vec<usize> {
    let fits = (MAX_BINDS / width.max(1)).max(1);
    let mut sizes = Vec::new();
    while rows > 0 {
        let size = [256, 64, 16, 4, 1]
            .into_iter()
            .find(|&size| size <= rows && size <= fits)
            .unwrap_or(1);
        sizes.push(size);
        rows -= size;
    }
    sizes
}

/// Inserts `rows` with one multi-row INSERT per chunk (`statement_chunks`
/// sizes, so the statement texts repeat), each with `on_conflict` when
/// given. Returns the rows written (on a conflict, what the clause did:
/// with DO NOTHING, only the new rows count).
pub async fn insert_chunks<A>(
    conn: &impl ConnectionTrait,
    rows: Vec<A>,
    on_conflict: Option<&OnConflict>,
) -> Result<u64, DbErr>
where
    A: ActiveModelTrait,
{
    let mut written = 0;
    for chunk in chunks_of(rows) {
        let mut insert = A::Entity::insert_many(chunk);
        if let Some(on_conflict) = on_conflict {
            insert = insert.on_conflict(on_conflict.clone());
        }
        written += insert.exec_without_returning(conn).await?;
    }
    Ok(written)
}

/// `insert_chunks` that returns the rows as written (`RETURNING`): for
/// upserts whose result the caller needs, such as a counter it increments.
pub async fn insert_chunks_returning<A>(
    conn: &impl ConnectionTrait,
    rows: Vec<A>,
    on_conflict: Option<&OnConflict>,
) -> Result<Vec<<A::Entity as EntityTrait>::Model>, DbErr>
where
    A: ActiveModelTrait,
    <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
{
    let mut written = Vec::with_capacity(rows.len());
    for chunk in chunks_of(rows) {
        let mut insert = A::Entity::insert_many(chunk);
        if let Some(on_conflict) = on_conflict {
            insert = insert.on_conflict(on_conflict.clone());
        }
        written.extend(insert.exec_with_returning(conn).await?);
    }
    Ok(written)
}

/// Active models in `statement_chunks` sizes, one value per column and row.
fn chunks_of<A: ActiveModelTrait>(rows: Vec<A>) -> Vec<Vec<A>> {
    let width = <A::Entity as EntityTrait>::Column::iter().count();
    let mut rows = rows.into_iter();
    chunk_sizes(rows.len(), width)
        .into_iter()
        .map(|size| rows.by_ref().take(size).collect())
        .collect()
}

/// A statement written with PostgreSQL's `$1` placeholders, for either
/// backend. SQLite gets anonymous `?` placeholders, with the values in the
/// order they appear: SQLite takes `$12` as a *named* parameter and finds
/// each name by a linear search, when parsing and again (through sqlx) when
/// binding, so a 6,000-value INSERT spent most of its time there (profile in
/// docs/performance.md). `$` inside a quoted literal is left alone, and so
/// is a `--` comment (to its line's end: an apostrophe in it is prose, not
/// a quote, and once took every placeholder after it for a literal). Not
/// understood: `/* */` comments and double-quoted identifiers holding `'`
/// or `--`; the statements written for it use neither.
pub fn statement(
    backend: DbBackend,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    if backend != DbBackend::Sqlite {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let bytes = sql.as_bytes();
    let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
    // Where each value went on its first use, for a second use to copy.
    let mut first_use: Vec<usize> = vec![0; values.len()];
    let mut taken: Vec<Value> = Vec::with_capacity(values.len());
    let mut text = String::with_capacity(sql.len());
    let (mut copied, mut i, mut quoted) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'-' if !quoted && bytes.get(i + 1) == Some(&b'-') => {
                i += bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(bytes.len() - i);
                continue;
            }
            b'\'' => quoted = !quoted,
            b'$' if !quoted => {
                let end = i
                    + 1
                    + bytes[i + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                let index = sql[i + 1..end]
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1));
                if let Some(slot) = index.filter(|&k| k < values.len()) {
                    // The usual single use moves the value; a second one copies it.
                    let value = match values[slot].take() {
                        Some(value) => {
                            first_use[slot] = taken.len();
                            value
                        }
                        None => taken[first_use[slot]].clone(),
                    };
                    text.push_str(&sql[copied..i]);
                    text.push('?');
                    taken.push(value);
                    copied = end;
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    text.push_str(&sql[copied..]);
    Statement::from_sql_and_values(backend, text, taken)
}

/// Updates many rows of one tenant: `WITH v (key, columns...) AS (...)
/// UPDATE table SET column = v.column ... FROM v`, where `v` is one UNNEST of
/// column arrays on PostgreSQL (one statement) and VALUES lists of the
/// `statement_chunks` sizes on SQLite. `key` must be the table's primary key.
/// Each row of `rows` holds the key's value, then one value per column.
/// `also` is added to the SET list as written (for example
/// `version = accounts.version + 1`). One statement for hundreds of rows
/// instead of one per row: on PostgreSQL each statement is a round trip and
/// an executor start, which is what lifecycle's per-account apply spent its
/// CPU on (docs/performance.md). Works on PostgreSQL and SQLite >= 3.33.
pub async fn update_from_values(
    conn: &impl ConnectionTrait,
    table: &str,
    tenant_id: &str,
    key: &str,
    columns: &[&str],
    also: Option<&str>,
    rows: Vec<Vec<Value>>,
) -> Result<(), DbErr> {
    let update = RowsUpdate {
        table,
        key,
        columns,
        also,
    };
    for statement in update.statements(conn.get_database_backend(), tenant_id, rows) {
        conn.execute_raw(statement).await?;
    }
    Ok(())
}

/// The statements of `update_from_values`.
pub struct RowsUpdate<'a> {
    pub table: &'a str,
    /// The table's primary key.
    pub key: &'a str,
    pub columns: &'a [&'a str],
    pub also: Option<&'a str>,
}

impl RowsUpdate<'_> {
    pub fn statements(
        &self,
        backend: DbBackend,
        tenant_id: &str,
        rows: Vec<Vec<Value>>,
    ) -> Vec<Statement> {
        let Self {
            table,
            key,
            columns,
            also,
        } = self;
        let width = columns.len() + 1;
        let mut sets: Vec<String> = columns.iter().map(|c| format!("{c} = v.{c}")).collect();
        sets.extend(also.map(str::to_owned));
        let sets = sets.join(", ");
        let names = std::iter::once(*key)
            .chain(columns.iter().copied())
            .collect::<Vec<_>>()
            .join(", ");
        if rows.is_empty() {
            return Vec::new();
        }
        // The driver binds an array of non-NULL values only (a NULL in one
        // panicked the call): a NULL takes the VALUES form, rare in practice.
        let nulls = rows.iter().flatten().any(|value| *value == value.as_null());
        if backend == DbBackend::Postgres && !nulls {
            // One statement taking one array per column, however many rows:
            // the chunked VALUES form was up to five statements, each parsed,
            // bound value by value and planned (docs/performance.md, round 6).
            let mut arrays: Vec<Vec<Value>> = vec![Vec::with_capacity(rows.len()); width];
            for row in rows {
                debug_assert_eq!(row.len(), width, "one value per column and the key");
                for (column, value) in arrays.iter_mut().zip(row) {
                    column.push(value);
                }
            }
            let params = (0..width)
                .map(|c| format!("${}", c + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "WITH v ({names}) AS (SELECT * FROM UNNEST({params})) UPDATE {table} SET {sets} \
                 FROM v WHERE {table}.tenant_id = $1 AND {table}.{key} = v.{key}"
            );
            let mut values: Vec<Value> = Vec::with_capacity(1 + width);
            values.push(tenant_id.into());
            for column in arrays {
                let kind = column[0].array_type();
                values.push(Value::Array(kind, Some(Box::new(column))));
            }
            return vec![statement(DbBackend::Postgres, &sql, values)];
        }
        statement_chunks(&rows, width)
            .into_iter()
            .map(|chunk| {
                let tuples = (0..chunk.len())
                    .map(|r| {
                        let cells = (0..width)
                            .map(|c| format!("${}", 2 + r * width + c))
                            .collect::<Vec<_>>()
                            .join(", ");
                        format!("({cells})")
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                // `+tenant_id` keeps the tenant check but takes it out of
                // index selection. Without statistics (SQLite has none here)
                // SQLite takes `tenant_id = ?` for a selective index prefix
                // and, from 64 rows on, scans the whole tenant once per row
                // of `v`: 4 ms for 64 of 2,000 contacts, 16 ms for 256, and
                // growing with the tenant. With it, each row of `v` is one
                // primary-key probe: 0.05 and 0.18 ms (docs/performance.md,
                // round 10). PostgreSQL has no unary `+` for text.
                let plus = if backend == DbBackend::Sqlite {
                    "+"
                } else {
                    ""
                };
                let sql = format!(
                    "WITH v ({names}) AS (VALUES {tuples}) UPDATE {table} SET {sets} FROM v \
                     WHERE {plus}{table}.tenant_id = $1 AND {table}.{key} = v.{key}"
                );
                let mut values: Vec<Value> = Vec::with_capacity(1 + chunk.len() * width);
                values.push(tenant_id.into());
                for row in chunk {
                    debug_assert_eq!(row.len(), width, "one value per column and the key");
                    values.extend(row.iter().cloned());
                }
                statement(backend, &sql, values)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::Database;

    #[test]
    fn chunks_take_a_few_fixed_sizes() {
        let rows: Vec<u32> = (0..1_500).collect();
        let sizes: Vec<usize> = statement_chunks(&rows, 12)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [256, 256, 256, 256, 256, 64, 64, 64, 16, 4, 4, 4]);
        assert_eq!(sizes.iter().sum::<usize>(), 1_500);
        // Wide rows: never more than MAX_BINDS values in one statement.
        let sizes: Vec<usize> = statement_chunks(&rows[..300], 200)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [64, 64, 64, 64, 16, 16, 4, 4, 4]);
        assert!(statement_chunks(&rows[..0], 3).is_empty());
    }

    #[test]
    fn sqlite_statements_get_positional_placeholders_in_use_order() {
        let values: Vec<Value> = vec![1_i64.into(), "two".into(), 3_i64.into()];
        let sql = "SELECT '$1 stays', $2 WHERE a = $1 AND b = $3 OR c = $1 AND d = $10";
        let s = statement(DbBackend::Sqlite, sql, values.clone());
        assert_eq!(
            s.sql,
            "SELECT '$1 stays', ? WHERE a = ? AND b = ? OR c = ? AND d = $10"
        );
        let expected: Vec<Value> = vec!["two".into(), 1_i64.into(), 3_i64.into(), 1_i64.into()];
        assert_eq!(s.values.expect("values").0, expected);

        let pg = statement(DbBackend::Postgres, sql, values.clone());
        assert_eq!(pg.sql, sql);
        assert_eq!(pg.values.expect("values").0, values);

        // A comment is prose: its apostrophe opens no literal, its `$1`
        // takes no value.
        let commented = "-- the account's $1\nSELECT $1, '--', $2 -- it's $2\nWHERE x = $2";
        let s = statement(DbBackend::Sqlite, commented, values[..2].to_vec());
        assert_eq!(
            s.sql,
            "-- the account's $1\nSELECT ?, '--', ? -- it's $2\nWHERE x = ?"
        );
    }

    #[tokio::test]
    async fn sqlite_runs_the_rewritten_statement() {
        let db = Database::connect("sqlite::memory:").await.expect("connect");
        let row = db
            .query_one_raw(statement(
                DbBackend::Sqlite,
                "SELECT $2 - $1 AS d, $1 + $1 AS twice",
                vec![10_i64.into(), 52_i64.into()],
            ))
            .await
            .expect("query")
            .expect("row");
        assert_eq!(row.try_get::<i64>("", "d").expect("d"), 42);
        assert_eq!(row.try_get::<i64>("", "twice").expect("twice"), 20);
    }
}
