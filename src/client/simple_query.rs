//! The simple query protocol: `simple_query`, `batch_execute`, their stream of results, and queries run in
//! [`QueryMode::Simple`] with their parameters rendered as literals.
//!
//! Shared requests (`&self`): each simple Query is queued in one step with its slot.

use std::sync::Arc;

use postgres_protocol::message::backend::Message;
use postgres_types::Type;
use tracing::Instrument as _;

use crate::client::prepare::read_description;
use crate::client::query::Collected;
use crate::client::telemetry::Pending;
use crate::client::{Param, Request, rows_affected, unexpected};
use crate::proto::row::{SimpleColumn, SimpleQueryMessage, SimpleQueryRow};
use crate::proto::statement::Column;
use crate::proto::{Backend, RawRow};
use crate::{Client, Error};

impl Client {
    /// Runs SQL text through the simple query protocol with the parameters rendered as literals; the text
    /// results are converted to the binary form [`Row`] decodes (see [`QueryMode::Simple`](crate::config::QueryMode::Simple)).
    pub(crate) async fn run_simple(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error> {
        let standard_strings =
            self.parameter("standard_conforming_strings").as_deref() != Some("off");
        let text = crate::client::simple_mode::render(sql, params, standard_strings)?;
        self.before_request().await?;
        let mut request = self.start_simple(&text)?;
        let mut collected = Collected::new();
        let mut columns: Vec<Column> = Vec::new();
        let mut result_sets = 0;
        // The first problem is kept and returned once ReadyForQuery ended the request, so the connection is
        // left in step.
        let mut error = None;
        loop {
            match request.next().await? {
                Backend::Ready => break,
                Backend::Message(Message::RowDescription(body)) => {
                    result_sets += 1;
                    if result_sets > 1 && error.is_none() {
                        error = Some(Error::unsupported(
                            "QueryMode::Simple: the SQL returned several result sets; use simple_query",
                        ));
                    }
                    columns = read_description(&body)?
                        .into_iter()
                        .map(|field| {
                            Column::new(
                                field.name,
                                crate::proto::text_values::column_type(
                                    Type::from_oid(field.type_oid).unwrap_or(Type::TEXT),
                                ),
                                field.table_oid,
                                field.column_id,
                            )
                        })
                        .collect();
                }
                Backend::Row(raw) => {
                    let mut fields = Vec::with_capacity(raw.len());
                    for (i, column) in columns.iter().enumerate().take(raw.len()) {
                        let field = raw.field(i).map(|text| {
                            crate::proto::text_values::text_to_binary(column.type_(), text)
                                .map(|binary| binary.into_vec())
                                .ok_or_else(|| {
                                    Error::unsupported(format!(
                                        "QueryMode::Simple cannot read the {} text of column {:?} \
                                         (DateStyle must be ISO and bytea_output hex)",
                                        column.type_(),
                                        column.name()
                                    ))
                                })
                        });
                        match field.transpose() {
                            Ok(field) => fields.push(field),
                            Err(e) => {
                                error.get_or_insert(e);
                                fields.push(None);
                            }
                        }
                    }
                    collected.rows.push(RawRow::from_fields(fields));
                }
                Backend::Message(Message::CommandComplete(body)) => {
                    collected.affected = rows_affected(body.tag().map_err(Error::malformed)?);
                }
                Backend::Message(
                    Message::EmptyQueryResponse | Message::CopyOutResponse(_) | Message::CopyDone,
                )
                | Backend::CopyData(_) => {}
                Backend::Error(db) => {
                    error.get_or_insert(Error::db(*db));
                }
                other => return Err(unexpected(other, "a simple query")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok((collected, columns.into())),
        }
    }
}

/// The results of a simple query, read one message at a time.
///
/// Dropping the stream before the end is safe: the connection discards the rest of the results on its next
/// call.
pub struct SimpleQueryStream<'a> {
    /// The request's telemetry: its span is entered while the results are read.
    telemetry: Pending,
    request: Request<'a>,
    columns: Option<Arc<[SimpleColumn]>>,
    error: Option<Error>,
    done: bool,
    /// The tag of the last CommandComplete (`COMMIT`, `ROLLBACK`, `INSERT 0 1`, ...).
    last_tag: Option<String>,
}

impl<'a> SimpleQueryStream<'a> {
    /// The results of a queued simple Query, read in the span of `telemetry`.
    pub(crate) fn new(request: Request<'a>, telemetry: Pending) -> SimpleQueryStream<'a> {
        SimpleQueryStream {
            telemetry,
            request,
            columns: None,
            error: None,
            done: false,
            last_tag: None,
        }
    }

    /// Reads to the end and returns the last command tag.
    pub(crate) async fn finish(mut self) -> Result<Option<String>, Error> {
        while self.next().await?.is_some() {}
        Ok(self.last_tag)
    }

    /// The next result message, `Ok(None)` at the end, or the server's error once the statements before it
    /// were delivered.
    pub async fn next(&mut self) -> Result<Option<SimpleQueryMessage>, Error> {
        let span = self.telemetry.span().clone();
        let message = self.next_message().instrument(span).await;
        if message.is_err() {
            self.done = true;
        }
        self.telemetry.observe(&message, Option::is_none);
        self.request.client().check(message)
    }

    async fn next_message(&mut self) -> Result<Option<SimpleQueryMessage>, Error> {
        if self.done {
            return Ok(None);
        }
        loop {
            let message = self.request.next().await;
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            };
            match message {
                Backend::Ready => {
                    self.done = true;
                    return match self.error.take() {
                        Some(e) => Err(e),
                        None => Ok(None),
                    };
                }
                Backend::Row(raw) => {
                    let Some(columns) = &self.columns else {
                        return Err(Error::protocol("DataRow before RowDescription"));
                    };
                    return SimpleQueryRow::new(columns.clone(), raw)
                        .map(|r| Some(SimpleQueryMessage::Row(r)));
                }
                Backend::Message(Message::RowDescription(body)) => {
                    let columns: Arc<[SimpleColumn]> = read_description(&body)?
                        .into_iter()
                        .map(|f| SimpleColumn {
                            name: f.name,
                            type_oid: f.type_oid,
                        })
                        .collect();
                    self.columns = Some(columns.clone());
                    return Ok(Some(SimpleQueryMessage::RowDescription(columns)));
                }
                Backend::Message(Message::CommandComplete(body)) => {
                    self.columns = None;
                    let tag = body.tag().map_err(Error::malformed)?;
                    self.last_tag = Some(tag.to_string());
                    return Ok(Some(SimpleQueryMessage::CommandComplete(rows_affected(
                        tag,
                    ))));
                }
                Backend::Message(Message::EmptyQueryResponse) => {}
                Backend::Error(db) => {
                    self.error = Some(Error::db(*db));
                }
                Backend::Message(Message::CopyOutResponse(_) | Message::CopyDone)
                | Backend::CopyData(_) => {}
                other => return Err(unexpected(other, "a simple query")),
            }
        }
    }
}
