//! The SQL the PostgreSQL sink runs: table names, the `CREATE TABLE` derived from an output's
//! columns, the column-by-column check of an existing table, and the merge of staged rows.

use arrow::datatypes::{DataType, Schema};

/// The column a view's rows carry to say `upsert`, `delete` or `snapshot`; never written.
pub const OP_COLUMN: &str = "op";

/// Why the sink's table or the output's rows do not fit: a table name, the output's columns
/// and keys, or an existing table's columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The `table` setting as written.
    #[error(
        "table `{0}`: expected `schema.table` (names of 1 to 63 characters, without `.` or `\"`)"
    )]
    TableName(String),
    #[error("rows without `window_start` or view keys cannot be upserted")]
    NoUpsertKey,
    #[error("column `{column}` is of type {ty} which has no PostgreSQL counterpart here")]
    UnsupportedType { column: String, ty: DataType },
    #[error("the output has no key columns to upsert by")]
    NoKeyColumns,
    /// The existing table lacks a column of the output (`created`: the type weir creates).
    #[error("table {table} has no column `{name}` for the output's column `{name}` ({ty}): add it as {created}, or let weir create the table")]
    MissingColumn {
        table: String,
        name: String,
        ty: DataType,
        created: String,
    },
    /// A column of the existing table whose type cannot take the output's values.
    #[error("table {table}: column `{name}` is {found}, but the output's `{name}` is {ty}: it must be one of {accepted}")]
    ColumnType {
        table: String,
        name: String,
        found: String,
        ty: String,
        accepted: String,
    },
    #[error("table {table}: column `{name}` is NOT NULL without a default, and the output has no such column to fill it")]
    NotNullColumn { table: String, name: String },
    /// The existing table has no unique index on the upsert key (its columns listed).
    #[error("table {table} has no primary key or unique index on exactly ({keys}): rows are upserted by it")]
    NoUniqueKey { table: String, keys: String },
    /// A key column of the existing table may hold NULL: a unique index takes NULLs as
    /// distinct, so a row with a NULL key would be inserted again at every retry or replay.
    #[error("table {table}: key column `{name}` may be NULL, and a unique index takes NULLs as distinct: a row whose `{name}` is NULL would be inserted again at every retry, restore or replay; make it NOT NULL (`ALTER TABLE {table} ALTER COLUMN \"{name}\" SET NOT NULL`; rows with a NULL key then go to the dead letters), make the index `NULLS NOT DISTINCT` (PostgreSQL 15), or let weir create the table")]
    NullableKey { table: String, name: String },
}

/// A schema-qualified table name (`public` when no schema is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table`; names are taken as written (quoted in SQL, so they
    /// are case-sensitive).
    pub fn parse(text: &str) -> Result<Self, LayoutError> {
        let (schema, table) = match text.split_once('.') {
            Some((s, t)) => (s, t),
            None => ("public", text),
        };
        for part in [schema, table] {
            if part.is_empty() || part.contains(['.', '"', '\0']) || part.len() > 63 {
                return Err(LayoutError::TableName(text.to_string()));
            }
        }
        Ok(TableName {
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }

    /// The quoted name for SQL: `"schema"."table"`.
    pub fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.table))
    }

    /// A table beside this one (same schema).
    pub fn sibling(&self, table: &str) -> TableName {
        TableName {
            schema: self.schema.clone(),
            table: table.to_string(),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The PostgreSQL type a column of this Arrow type is created with, and the type names
/// (`pg_type.typname`) an existing table may have for it (values are sent as text, which the
/// server parses into any of them).
pub fn pg_type(t: &DataType) -> Option<(String, &'static [&'static str])> {
    const INTS: &[&str] = &["int8", "int4", "int2", "numeric"];
    const FLOATS: &[&str] = &["float8", "float4", "numeric"];
    const TEXT: &[&str] = &["text", "varchar", "bpchar"];
    const TIMES: &[&str] = &["timestamptz", "timestamp"];
    Some(match t {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => ("smallint".into(), INTS),
        DataType::Int32 | DataType::UInt16 => ("integer".into(), INTS),
        DataType::Int64 | DataType::UInt32 => ("bigint".into(), INTS),
        DataType::UInt64 => ("numeric(20,0)".into(), INTS),
        DataType::Float16 | DataType::Float32 => ("real".into(), FLOATS),
        DataType::Float64 => ("double precision".into(), FLOATS),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            (format!("numeric({p},{s})"), &["numeric", "float8"])
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ("text".into(), TEXT),
        DataType::Boolean => ("boolean".into(), &["bool"]),
        DataType::Timestamp(..) => ("timestamptz".into(), TIMES),
        DataType::Date32 | DataType::Date64 => {
            ("date".into(), &["date", "timestamptz", "timestamp"])
        }
        _ => return None,
    })
}

/// The order that puts a key's last staged row first.
const LAST_FIRST: &str = "weir_epoch DESC, weir_seq DESC";

/// What the sink writes: the output's columns, which of them form the upsert key, and the
/// tables involved.
#[derive(Debug, Clone)]
pub struct Layout {
    pub table: TableName,
    /// The output's columns written, in order (a view's `op` left out), with their types.
    pub columns: Vec<(String, DataType)>,
    /// How many leading columns are the conflict key (the key columns, and `window_start`
    /// for windows).
    pub keys: usize,
    /// Where rows wait before they are merged into the table.
    pub staging: TableName,
    /// A view's rows (they may delete their key); else a window's.
    pub view: bool,
}

impl Layout {
    /// The layout of `schema`'s rows: `view_keys` key columns for a view, else the columns
    /// up to `window_start` (a window).
    pub fn new(
        table: TableName,
        staging: TableName,
        schema: &Schema,
        view_keys: Option<usize>,
    ) -> Result<Self, LayoutError> {
        let keys = match view_keys {
            Some(k) => k,
            None => {
                schema
                    .index_of("window_start")
                    .map_err(|_| LayoutError::NoUpsertKey)?
                    + 1
            }
        };
        let mut columns = Vec::new();
        for f in schema.fields() {
            if view_keys.is_some() && f.name() == OP_COLUMN {
                continue;
            }
            if pg_type(f.data_type()).is_none() {
                return Err(LayoutError::UnsupportedType {
                    column: f.name().clone(),
                    ty: f.data_type().clone(),
                });
            }
            columns.push((f.name().clone(), f.data_type().clone()));
        }
        if keys == 0 || keys > columns.len() {
            return Err(LayoutError::NoKeyColumns);
        }
        Ok(Layout {
            table,
            columns,
            keys,
            staging,
            view: view_keys.is_some(),
        })
    }

    fn key_names(&self) -> impl Iterator<Item = &str> {
        self.columns[..self.keys].iter().map(|(n, _)| n.as_str())
    }

    fn column_list(&self, prefix: &str) -> String {
        self.columns
            .iter()
            .map(|(n, _)| format!("{prefix}{}", ident(n)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `CREATE TABLE IF NOT EXISTS` of the table, its primary key the conflict key.
    pub fn create_table(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (n, t))| {
                let ty = pg_type(t).map(|p| p.0).unwrap_or_else(|| "text".into());
                let null = if i < self.keys { " NOT NULL" } else { "" };
                format!("{} {ty}{null}", ident(n))
            })
            .collect();
        let pk: Vec<String> = self.key_names().map(ident).collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
            self.table.sql(),
            cols.join(", "),
            pk.join(", ")
        )
    }

    /// The staging table: the table's columns with its defaults and constraints (a row the
    /// table would refuse for its type, `NOT NULL` or `CHECK` is refused when staged), the
    /// epoch a row belongs to, its order and whether it deletes its key.
    pub fn create_staging(&self, temporary: bool) -> String {
        let (kind, name) = if temporary {
            ("TEMPORARY ", ident(&self.staging.table))
        } else {
            ("", self.staging.sql())
        };
        format!(
            "CREATE {kind}TABLE {name} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, \
             weir_epoch bigint NOT NULL, weir_seq bigint NOT NULL, weir_delete boolean NOT NULL){}",
            self.table.sql(),
            if temporary {
                " ON COMMIT DELETE ROWS"
            } else {
                ""
            }
        )
    }

    /// The staging table's name in SQL (a temporary one is unqualified).
    pub fn staging_sql(&self, temporary: bool) -> String {
        if temporary {
            ident(&self.staging.table)
        } else {
            self.staging.sql()
        }
    }

    /// `COPY … FROM STDIN (FORMAT binary)` (or `csv`) into the staging table.
    pub fn copy_in(&self, temporary: bool, binary: bool) -> String {
        format!(
            "COPY {} ({}, weir_epoch, weir_seq, weir_delete) FROM STDIN (FORMAT {})",
            self.staging_sql(temporary),
            self.column_list(""),
            if binary { "binary" } else { "csv" }
        )
    }

    /// Merges the staged rows of epochs up to `$1` into the table: per key its last row,
    /// upserted or deleted. `unique_keys`: no key is staged twice, so the rows need no
    /// `DISTINCT ON` (its sort costs about a tenth of the merge). `deletes`: some staged rows
    /// may delete their key (a view's); without, the statement has no `DELETE` (which would
    /// make the server materialize the staged rows: about a quarter of the merge).
    pub fn merge(&self, temporary: bool, unique_keys: bool, deletes: bool) -> String {
        let staging = self.staging_sql(temporary);
        let cols = self.column_list("");
        let last = if unique_keys {
            format!("SELECT {cols}, weir_delete FROM {staging} WHERE weir_epoch <= $1")
        } else {
            format!(
                "SELECT DISTINCT ON ({keys}) {cols}, weir_delete FROM {staging} \
                 WHERE weir_epoch <= $1 ORDER BY {keys}, {LAST_FIRST}",
                keys = self.key_list()
            )
        };
        self.upsert(&last, deletes)
    }

    /// The table a merge in parts reads (see [`Self::merge_parts_table`]): a temporary one
    /// beside a temporary staging table, else an unlogged one beside the staging table (so
    /// that a sink with checkpoints needs no right to temporary tables).
    pub fn parts_sql(&self, temporary: bool) -> String {
        if temporary {
            "pg_temp.weir_merge_parts".to_string()
        } else {
            self.staging
                .sibling(&format!("{}_parts", self.staging.table))
                .sql()
        }
    }

    /// After a refused merge, the statements that copy what [`Self::merge`] would merge
    /// (per key its last row of the epochs up to `upto`) into [`Self::parts_sql`], indexed
    /// by sequence number (dropped after the merge, or with its transaction): the merge in
    /// parts then reads each part there, not the whole staging table again.
    pub fn merge_parts_table(&self, temporary: bool, upto: i64) -> [String; 3] {
        let parts = self.parts_sql(temporary);
        let create = if temporary {
            "CREATE TEMPORARY TABLE weir_merge_parts".to_string()
        } else {
            format!("CREATE UNLOGGED TABLE {parts}")
        };
        [
            format!(
                "{create} AS SELECT DISTINCT ON ({keys}) {cols}, weir_delete, weir_epoch, \
                 weir_seq FROM {staging} WHERE weir_epoch <= {upto} ORDER BY {keys}, {LAST_FIRST}",
                keys = self.key_list(),
                cols = self.column_list(""),
                staging = self.staging_sql(temporary),
            ),
            format!("CREATE INDEX ON {parts} (weir_seq)"),
            format!("ANALYZE {parts}"),
        ]
    }

    /// Merges the rows of [`Self::parts_sql`] whose sequence numbers are in the array `$1`.
    pub fn merge_part(&self, temporary: bool, deletes: bool) -> String {
        let last = format!(
            "SELECT {}, weir_delete FROM {} WHERE weir_seq = ANY($1)",
            self.column_list(""),
            self.parts_sql(temporary)
        );
        self.upsert(&last, deletes)
    }

    /// The sequence numbers of the rows of [`Self::parts_sql`], in the order they were
    /// staged.
    pub fn merge_part_seqs(&self, temporary: bool) -> String {
        format!(
            "SELECT weir_seq FROM {} ORDER BY weir_epoch, weir_seq",
            self.parts_sql(temporary)
        )
    }

    /// Upserts (or deletes, with `deletes`) the rows that `last` selects (the table's
    /// columns and `weir_delete`, one row per key).
    fn upsert(&self, last: &str, deletes: bool) -> String {
        let keys = self.key_list();
        let cols = self.column_list("");
        let matches: Vec<String> = self
            .key_names()
            .map(|k| format!("t.{0} = l.{0}", ident(k)))
            .collect();
        let updates: Vec<String> = self.columns[self.keys..]
            .iter()
            .map(|(n, _)| format!("{0} = EXCLUDED.{0}", ident(n)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let table = self.table.sql();
        let delete = if deletes {
            format!(
                ", d AS (DELETE FROM {table} t USING l WHERE l.weir_delete AND {})",
                matches.join(" AND ")
            )
        } else {
            String::new()
        };
        format!(
            "WITH l AS ({last}){delete} \
             INSERT INTO {table} ({cols}) SELECT {cols} FROM l WHERE NOT l.weir_delete \
             ON CONFLICT ({keys}) {on_conflict}"
        )
    }

    /// The key columns, quoted, separated by commas.
    fn key_list(&self) -> String {
        let keys: Vec<String> = self.key_names().map(ident).collect();
        keys.join(", ")
    }

    /// A row of [`Self::parts_sql`] (sequence number `$1`) as JSON (its output columns),
    /// for the dead letters.
    pub fn part_row_json(&self, temporary: bool) -> String {
        let pairs: Vec<String> = self
            .columns
            .iter()
            .map(|(n, t)| match t {
                // as the other outputs write timestamps: 2026-11-22T10:05:00.000Z
                DataType::Timestamp(..) => format!(
                    "{}, to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                    literal(n),
                    ident(n)
                ),
                _ => format!("{}, {}", literal(n), ident(n)),
            })
            .collect();
        format!(
            "SELECT json_build_object({})::text FROM {} WHERE weir_seq = $1",
            pairs.join(", "),
            self.parts_sql(temporary)
        )
    }
}

/// A column of an existing table, as `pg_attribute` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    pub name: String,
    /// `pg_type.typname` (`int8`, `text`...).
    pub type_name: String,
    /// `format_type()` (`bigint`, `character varying(20)`...).
    pub display: String,
    pub not_null: bool,
    pub has_default: bool,
}

/// The catalog query [`check_table`] reads: the table's columns, `$1` its quoted name.
pub const COLUMNS_QUERY: &str = "SELECT a.attname::text, t.typname::text, \
     format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// The column sets of the table's unique indexes (the primary key's included), `$1` its
/// quoted name, each with whether it takes NULLs as equal (`NULLS NOT DISTINCT`,
/// PostgreSQL 15 and later: read through `to_jsonb`, which older servers answer without).
pub const UNIQUE_QUERY: &str = "SELECT array_agg(a.attname::text ORDER BY a.attname), \
     bool_or(COALESCE((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false)) \
     FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
     WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL GROUP BY i.indexrelid";

/// A unique index of a table: its columns, and whether it takes NULLs as equal.
pub type UniqueIndex = (Vec<String>, bool);

/// How many constraints of the table, `$1` its quoted name, a staging table `LIKE` it does
/// not have, so that a merge can refuse rows the staging took: foreign keys, exclusion
/// constraints, unique indexes besides one (the upsert key's), user triggers.
pub const MERGE_CONSTRAINTS_QUERY: &str = "SELECT \
     (SELECT count(*) FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('f', 'x')) \
     + (SELECT greatest(count(*) - 1, 0) FROM pg_index WHERE indrelid = $1::regclass AND indisunique) \
     + (SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal)";

/// How many deferrable constraints and constraint triggers table `$1` has.
pub const DEFERRABLE_QUERY: &str = "SELECT \
     (SELECT count(*) FROM pg_constraint WHERE conrelid = $1::regclass AND condeferrable) \
     + (SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND tgdeferrable)";

/// Checks an existing table against the layout, column by column; the error names the
/// first mismatch and what would fit.
pub fn check_table(
    layout: &Layout,
    columns: &[TableColumn],
    unique: &[UniqueIndex],
) -> Result<(), LayoutError> {
    let table = &layout.table;
    for (name, t) in &layout.columns {
        let (created, accepted) = pg_type(t).unwrap_or(("text".into(), &[]));
        let Some(c) = columns.iter().find(|c| &c.name == name) else {
            return Err(LayoutError::MissingColumn {
                table: table.to_string(),
                name: name.clone(),
                ty: t.clone(),
                created,
            });
        };
        if !accepted.contains(&c.type_name.as_str()) {
            return Err(LayoutError::ColumnType {
                table: table.to_string(),
                name: name.clone(),
                found: c.display.clone(),
                ty: t.to_string(),
                accepted: accepted
                    .iter()
                    .map(|a| display_type(a))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    for c in columns {
        if c.not_null && !c.has_default && !layout.columns.iter().any(|(n, _)| n == &c.name) {
            return Err(LayoutError::NotNullColumn {
                table: table.to_string(),
                name: c.name.clone(),
            });
        }
    }
    let mut want: Vec<String> = layout.key_names().map(str::to_string).collect();
    want.sort();
    let covering: Vec<&UniqueIndex> = unique
        .iter()
        .filter(|(u, _)| {
            let mut u = u.clone();
            u.sort();
            u == want
        })
        .collect();
    if covering.is_empty() {
        return Err(LayoutError::NoUniqueKey {
            table: table.to_string(),
            keys: layout.key_names().collect::<Vec<_>>().join(", "),
        });
    }
    // (the columns were all found above)
    let nulls_equal = covering.iter().any(|(_, n)| *n);
    if let Some(c) = columns
        .iter()
        .find(|c| !nulls_equal && !c.not_null && layout.key_names().any(|k| k == c.name))
    {
        return Err(LayoutError::NullableKey {
            table: table.to_string(),
            name: c.name.clone(),
        });
    }
    Ok(())
}

/// The SQL name of a `pg_type.typname`.
fn display_type(typname: &str) -> &str {
    match typname {
        "int8" => "bigint",
        "int4" => "integer",
        "int2" => "smallint",
        "float8" => "double precision",
        "float4" => "real",
        "varchar" => "character varying",
        "bpchar" => "character",
        "bool" => "boolean",
        "timestamptz" => "timestamp with time zone",
        "timestamp" => "timestamp without time zone",
        other => other,
    }
}

/// The table of committed epochs, beside the sink's table.
pub fn create_epochs(epochs: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (pipeline text NOT NULL, sink text NOT NULL, \
         worker text NOT NULL DEFAULT '', epoch bigint NOT NULL, \
         committed_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (pipeline, sink, worker, epoch))",
        epochs.sql()
    )
}

/// `weir_sink_refused`: rows the commit of an epoch refused (a foreign key or a trigger that
/// changed its verdict since the trial merge), kept until a complete checkpoint's dead letters
/// hold them (`reported`: the epoch whose dead letters do). Without it, a crash between the
/// commit and the next checkpoint, or the end of the run, lost them.
/// Its statements: the table, and an index on the sequence every statement on it selects
/// (with the index's qualified name: `CREATE INDEX IF NOT EXISTS` needs the table's
/// ownership even when the index exists, so it is run only when the index is missing, and
/// another role's pipeline in the same schema can share the table).
pub fn create_refused(refused: &TableName) -> (String, String, String) {
    let index = format!("{}_sequence", refused.table);
    (
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, pipeline text NOT NULL, \
             sink text NOT NULL, worker text NOT NULL DEFAULT '', refused_in bigint NOT NULL, \
             reported bigint, sqlstate text NOT NULL, message text NOT NULL, raw text NOT NULL, \
             refused_at timestamptz NOT NULL DEFAULT now())",
            refused.sql()
        ),
        format!("{}.{}", ident(&refused.schema), ident(&index)),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} (pipeline, sink, worker)",
            ident(&index),
            refused.sql()
        ),
    )
}

/// Whether the table `$1` has a `worker` column (`weir_sink_epochs` of an earlier version
/// has none).
pub const HAS_WORKER_QUERY: &str = "SELECT EXISTS (SELECT 1 FROM pg_attribute \
     WHERE attrelid = $1::regclass AND attname = 'worker' AND NOT attisdropped)";

/// The name of the primary key constraint of table `$1`.
pub const PRIMARY_KEY_QUERY: &str =
    "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'";

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};

    fn window_schema() -> Schema {
        Schema::new(vec![
            Field::new("datasetName", DataType::Utf8, true),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("events", DataType::Int64, false),
            Field::new("ratio", DataType::Float64, true),
        ])
    }

    fn layout() -> Layout {
        let t = TableName::parse("public.per_dataset").unwrap();
        Layout::new(t.clone(), t.sibling("stage"), &window_schema(), None).unwrap()
    }

    #[test]
    fn table_names_are_schema_qualified_and_quoted() {
        let t = TableName::parse("analytics.Ingestion_5m").unwrap();
        assert_eq!(t.sql(), "\"analytics\".\"Ingestion_5m\"");
        assert_eq!(TableName::parse("t").unwrap().schema, "public");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("a.").is_err());
        assert!(TableName::parse("x\"y").is_err());
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn a_window_table_is_keyed_by_its_keys_and_window_start() {
        let sql = layout().create_table();
        assert_eq!(
            sql,
            "CREATE TABLE IF NOT EXISTS \"public\".\"per_dataset\" (\"datasetName\" text NOT NULL, \
             \"window_start\" timestamptz NOT NULL, \"window_end\" timestamptz, \"events\" bigint, \
             \"ratio\" double precision, PRIMARY KEY (\"datasetName\", \"window_start\"))"
        );
    }

    #[test]
    fn a_view_is_keyed_by_its_keys_without_its_op_column() {
        let mut meta = std::collections::HashMap::new();
        meta.insert("weir.keys".to_string(), "1".to_string());
        let schema = Schema::new_with_metadata(
            vec![
                Field::new("source", DataType::Utf8, true),
                Field::new("events", DataType::Int64, false),
                Field::new("op", DataType::Utf8, false),
            ],
            meta,
        );
        let t = TableName::parse("v").unwrap();
        let l = Layout::new(t.clone(), t.sibling("s"), &schema, Some(1)).unwrap();
        assert_eq!(l.columns.len(), 2);
        assert!(l.create_table().ends_with("PRIMARY KEY (\"source\"))"));
        let merge = l.merge(true, false, true);
        assert!(merge.contains("DELETE FROM \"public\".\"v\" t USING l WHERE l.weir_delete AND t.\"source\" = l.\"source\""), "{merge}");
        assert!(
            merge.contains(
                "ON CONFLICT (\"source\") DO UPDATE SET \"events\" = EXCLUDED.\"events\""
            ),
            "{merge}"
        );
        assert!(
            merge.contains("FROM \"s\" WHERE"),
            "a temporary staging table is unqualified: {merge}"
        );
    }

    #[test]
    fn the_merge_takes_the_last_row_of_each_key() {
        let merge = layout().merge(false, false, true);
        assert!(
            merge.contains("SELECT DISTINCT ON (\"datasetName\", \"window_start\")"),
            "{merge}"
        );
        assert!(
            merge.contains(
                "ORDER BY \"datasetName\", \"window_start\", weir_epoch DESC, weir_seq DESC"
            ),
            "{merge}"
        );
        assert!(
            merge.contains("\"window_end\" = EXCLUDED.\"window_end\""),
            "{merge}"
        );
        // the merge in parts: the same rows, copied once, then merged part by part
        let [copy, index, _] = layout().merge_parts_table(false, 7);
        assert!(
            copy.starts_with("CREATE UNLOGGED TABLE \"public\".\"stage_parts\" AS SELECT DISTINCT ON (\"datasetName\", \"window_start\")")
                && copy.contains("WHERE weir_epoch <= 7 ORDER BY \"datasetName\", \"window_start\", weir_epoch DESC, weir_seq DESC"),
            "{copy}"
        );
        assert_eq!(
            index,
            "CREATE INDEX ON \"public\".\"stage_parts\" (weir_seq)"
        );
        let [copy, index, _] = layout().merge_parts_table(true, 7);
        assert!(
            copy.starts_with("CREATE TEMPORARY TABLE weir_merge_parts AS"),
            "{copy}"
        );
        assert_eq!(index, "CREATE INDEX ON pg_temp.weir_merge_parts (weir_seq)");
        let part = layout().merge_part(true, true);
        assert!(
            part.starts_with("WITH l AS (SELECT \"datasetName\", \"window_start\", \"window_end\", \"events\", \"ratio\", weir_delete FROM pg_temp.weir_merge_parts WHERE weir_seq = ANY($1)), d AS (DELETE"),
            "{part}"
        );
        let unique = layout().merge(true, true, false);
        assert!(
            unique.starts_with("WITH l AS (SELECT \"datasetName\", \"window_start\", \"window_end\", \"events\", \"ratio\", weir_delete FROM \"stage\" WHERE weir_epoch <= $1) INSERT INTO"),
            "{unique}"
        );
        assert!(layout()
            .create_staging(false)
            .contains("LIKE \"public\".\"per_dataset\" INCLUDING DEFAULTS INCLUDING CONSTRAINTS"));
    }

    fn col(name: &str, ty: &str, display: &str) -> TableColumn {
        TableColumn {
            name: name.into(),
            type_name: ty.into(),
            display: display.into(),
            not_null: false,
            has_default: false,
        }
    }

    fn good_columns() -> Vec<TableColumn> {
        let key = |name, ty, display| TableColumn {
            not_null: true,
            ..col(name, ty, display)
        };
        vec![
            key("datasetName", "varchar", "character varying(64)"),
            key("window_start", "timestamptz", "timestamp with time zone"),
            col("window_end", "timestamp", "timestamp without time zone"),
            col("events", "int4", "integer"),
            col("ratio", "numeric", "numeric"),
        ]
    }

    fn pk() -> Vec<UniqueIndex> {
        vec![(vec!["window_start".into(), "datasetName".into()], false)]
    }

    #[test]
    fn an_existing_table_with_compatible_columns_is_accepted() {
        let mut cols = good_columns();
        let mut extra = col("note", "text", "text");
        extra.has_default = true;
        extra.not_null = true;
        cols.push(extra);
        check_table(&layout(), &cols, &pk()).unwrap();
    }

    #[test]
    fn a_mismatch_is_named_column_by_column() {
        let mut cols = good_columns();
        cols[3] = col("events", "text", "text");
        let e = check_table(&layout(), &cols, &pk())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "table public.per_dataset: column `events` is text, but the output's `events` is Int64: it must be one of bigint, integer, smallint, numeric");
        let e = check_table(&layout(), &good_columns()[..4], &pk())
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no column `ratio`"), "{e}");
        let mut cols = good_columns();
        let mut extra = col("owner", "text", "text");
        extra.not_null = true;
        cols.push(extra);
        let e = check_table(&layout(), &cols, &pk())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("column `owner` is NOT NULL without a default"),
            "{e}"
        );
        let e = check_table(
            &layout(),
            &good_columns(),
            &[(vec!["datasetName".into()], false)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no primary key or unique index on exactly (datasetName, window_start)"),
            "{e}"
        );
        // a unique index over a column that may be NULL does not stop NULL keys repeating
        let mut cols = good_columns();
        cols[0].not_null = false;
        let e = check_table(&layout(), &cols, &pk())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key column `datasetName` may be NULL") && e.contains("SET NOT NULL"),
            "{e}"
        );
        // unless the index takes NULLs as equal (`NULLS NOT DISTINCT`)
        let mut nulls_equal = pk();
        nulls_equal[0].1 = true;
        check_table(&layout(), &cols, &nulls_equal).unwrap();
    }

    #[test]
    fn unsupported_types_are_refused_when_planned() {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("b", DataType::Binary, true),
        ]);
        let t = TableName::parse("t").unwrap();
        let e = Layout::new(t.clone(), t, &schema, None).unwrap_err();
        assert!(
            matches!(&e, LayoutError::UnsupportedType { column, .. } if column == "b"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "column `b` is of type Binary which has no PostgreSQL counterpart here"
        );
    }
}
