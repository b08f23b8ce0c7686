//! Types beyond the built-in ones: enums, domains, composites, ranges and arrays of them, looked up in the
//! server's catalog once per connection and cached.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use postgres_types::{Field, Kind, Type};

use crate::proto::row::SimpleQueryMessage;
use crate::{Client, Error};

/// Nested user-defined types deeper than this are refused rather than followed.
const MAX_TYPE_DEPTH: u32 = 16;

/// Types resolved from the catalog, by OID.
#[derive(Default)]
pub(crate) struct TypeCache {
    types: HashMap<u32, Type>,
    lookups: u64,
}

impl TypeCache {
    pub(crate) fn get(&self, oid: u32) -> Option<Type> {
        self.types.get(&oid).cloned()
    }

    /// How many catalog lookups ran on this connection; each one replaced the unnamed statement.
    pub(crate) fn lookups(&self) -> u64 {
        self.lookups
    }
}

#[cfg(not(target_os = "wasi"))]
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
#[cfg(target_os = "wasi")]
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Looks up a type that `Type::from_oid` does not know.
pub(crate) async fn lookup(client: &Client, oid: u32) -> Result<Type, Error> {
    lookup_depth(client, oid, 0).await
}

fn lookup_depth(client: &Client, oid: u32, depth: u32) -> BoxFuture<'_, Result<Type, Error>> {
    Box::pin(async move {
        if let Some(ty) = Type::from_oid(oid).or_else(|| client.lock().types.get(oid)) {
            return Ok(ty);
        }
        if depth > MAX_TYPE_DEPTH {
            return Err(Error::protocol(format!(
                "type {oid} nests deeper than {MAX_TYPE_DEPTH} levels"
            )));
        }
        client.lock().types.lookups += 1;
        // Catalog lookups use the simple protocol: no named statement is left on the server, so they also work
        // behind transaction-pooling PgBouncer. The price is that they replace the unnamed statement, which the
        // caller re-parses (see `Client::statement`). The OID is a number we format: no quoting is needed.
        let sql = format!(
            "SELECT t.typname, t.typtype, t.typelem, r.rngsubtype, t.typbasetype, n.nspname, t.typrelid \
             FROM pg_catalog.pg_type t \
             LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.oid = {oid}"
        );
        let rows = text_rows(client, &sql).await?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| Error::protocol(format!("type OID {oid} is not in pg_type")))?;
        let [name, typtype, elem, range_sub, base, schema, relid] =
            <[Option<String>; 7]>::try_from(row)
                .map_err(|_| Error::protocol("unexpected pg_type lookup result"))?;
        let name = name.unwrap_or_default();
        let schema = schema.unwrap_or_default();
        let number = |v: Option<String>| v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let kind = match typtype.as_deref() {
            Some("e") => {
                let sql = format!(
                    "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = {oid} ORDER BY enumsortorder"
                );
                let labels = text_rows(client, &sql).await?;
                Kind::Enum(
                    labels
                        .into_iter()
                        .filter_map(|mut r| r.pop().flatten())
                        .collect(),
                )
            }
            Some("p") => Kind::Pseudo,
            Some("d") => Kind::Domain(lookup_depth(client, number(base), depth + 1).await?),
            Some("r") => Kind::Range(lookup_depth(client, number(range_sub), depth + 1).await?),
            Some("c") => {
                let sql = format!(
                    "SELECT attname, atttypid FROM pg_catalog.pg_attribute \
                     WHERE attrelid = {} AND NOT attisdropped AND attnum > 0 ORDER BY attnum",
                    number(relid)
                );
                let mut fields = Vec::new();
                for row in text_rows(client, &sql).await? {
                    let mut row = row.into_iter();
                    let field_name = row.next().flatten().unwrap_or_default();
                    let field_oid = number(row.next().flatten());
                    fields.push(Field::new(
                        field_name,
                        lookup_depth(client, field_oid, depth + 1).await?,
                    ));
                }
                Kind::Composite(fields)
            }
            _ if number(elem.clone()) != 0 => {
                Kind::Array(lookup_depth(client, number(elem), depth + 1).await?)
            }
            _ => Kind::Simple,
        };
        let ty = Type::new(name, oid, kind, schema);
        client.lock().types.types.insert(oid, ty.clone());
        Ok(ty)
    })
}

/// Runs a catalog query and returns its rows as text.
async fn text_rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
    let mut rows = Vec::new();
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            );
        }
    }
    Ok(rows)
}
