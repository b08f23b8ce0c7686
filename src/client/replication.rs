//! Replication over a replication connection (`replication=database` for logical, `true` for physical): the
//! replication commands as typed calls, and `START_REPLICATION`, whose stream is in `replication_stream.rs`.

use crate::client::Client;
use crate::client::replication_stream::{LogicalReplicationStream, ReplicationStream};
use crate::proto::replication::Lsn;
use crate::proto::row::SimpleQueryMessage;
use crate::{Error, SimpleQueryRow};

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database connected to (`None` on a physical replication connection).
    pub dbname: Option<String>,
}

/// A slot made by [`Client::create_replication_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// The first position the slot can stream from: changes committed after it.
    pub consistent_point: Lsn,
    /// The exported snapshot (with [`SlotSnapshot::Export`]), usable by `SET TRANSACTION SNAPSHOT` while this
    /// connection runs no other command.
    pub snapshot_name: Option<String>,
    /// The output plugin (`None` for a physical slot).
    pub output_plugin: Option<String>,
}

/// What `READ_REPLICATION_SLOT` reports of an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// The oldest WAL position the slot still needs (`None` if not reserved yet).
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<u32>,
}

/// What `CREATE_REPLICATION_SLOT` does about a snapshot of the database at the slot's consistent point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlotSnapshot {
    /// No snapshot (`nothing`): for a consumer that starts from the changes only.
    #[default]
    Nothing,
    /// Export a snapshot that other sessions can import, for an initial copy consistent with the stream.
    Export,
    /// Use the snapshot in this session's transaction (the command runs inside `BEGIN ... ISOLATION LEVEL
    /// REPEATABLE READ` then).
    Use,
}

/// The kind of slot [`Client::create_replication_slot`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotKind {
    /// A logical slot decoded by this output plugin (`pgoutput` for [`Client::start_logical_replication`]).
    Logical {
        /// The output plugin.
        plugin: String,
        /// The snapshot to take.
        snapshot: SlotSnapshot,
        /// Decode prepared transactions at PREPARE (PostgreSQL 15 and later; the stream must ask for
        /// `two_phase` too).
        two_phase: bool,
    },
    /// A physical slot.
    Physical {
        /// Reserve WAL now instead of at the first `START_REPLICATION`.
        reserve_wal: bool,
    },
}

impl SlotKind {
    /// A logical slot for `pgoutput`, without a snapshot.
    pub fn pgoutput() -> SlotKind {
        SlotKind::Logical {
            plugin: "pgoutput".into(),
            snapshot: SlotSnapshot::Nothing,
            two_phase: false,
        }
    }
}

/// How `pgoutput` streams in-progress transactions (its `streaming` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Streaming {
    /// Only committed transactions, each whole (the default).
    #[default]
    Off,
    /// Large transactions in blocks while they run (protocol 2 and later).
    On,
    /// As `On`, for parallel apply (protocol 4, PostgreSQL 16 and later).
    Parallel,
}

/// The options of a `pgoutput` stream ([`Client::start_logical_replication`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutputOptions {
    /// The protocol version, 1 to 4 (default 1; 2 for streaming, 3 for two-phase, 4 for parallel streaming).
    pub proto_version: u8,
    /// The publications whose changes are streamed.
    pub publication_names: Vec<String>,
    /// Values in binary form instead of text (faster to decode; the server needs binary send functions for
    /// every column type).
    pub binary: bool,
    /// Also stream `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Stream large in-progress transactions.
    pub streaming: Streaming,
    /// Decode prepared transactions at PREPARE (protocol 3; the slot must be made with two-phase on).
    pub two_phase: bool,
    /// `Some("none")`: only changes that have no replication origin; `Some("any")`: all (the default).
    pub origin: Option<String>,
}

impl PgOutputOptions {
    /// Protocol 1 for these publications, text values, nothing else.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(publications: I) -> PgOutputOptions {
        PgOutputOptions {
            proto_version: 1,
            publication_names: publications.into_iter().map(Into::into).collect(),
            binary: false,
            messages: false,
            streaming: Streaming::Off,
            two_phase: false,
            origin: None,
        }
    }

    /// The option list of `START_REPLICATION ... LOGICAL`, checked.
    fn to_sql(&self) -> Result<String, Error> {
        if !(1..=4).contains(&self.proto_version) {
            return Err(Error::config(format!(
                "pgoutput proto_version {} (1 to 4 exist)",
                self.proto_version
            )));
        }
        let needs = |what: &str, version: u8| {
            Error::config(format!(
                "pgoutput {what} needs proto_version {version} or later (asked for {})",
                self.proto_version
            ))
        };
        match self.streaming {
            Streaming::On if self.proto_version < 2 => return Err(needs("streaming", 2)),
            Streaming::Parallel if self.proto_version < 4 => {
                return Err(needs("parallel streaming", 4));
            }
            _ => {}
        }
        if self.two_phase && self.proto_version < 3 {
            return Err(needs("two_phase", 3));
        }
        if self.publication_names.is_empty() {
            return Err(Error::config("pgoutput needs at least one publication"));
        }
        let names: Vec<String> = self
            .publication_names
            .iter()
            .map(|name| quote_in_list(name))
            .collect::<Result<_, _>>()?;
        let mut options = vec![
            format!("proto_version '{}'", self.proto_version),
            format!("publication_names {}", literal(&names.join(","))?),
        ];
        if self.binary {
            options.push("binary 'true'".into());
        }
        if self.messages {
            options.push("messages 'true'".into());
        }
        match self.streaming {
            Streaming::Off => {}
            Streaming::On => options.push("streaming 'on'".into()),
            Streaming::Parallel => options.push("streaming 'parallel'".into()),
        }
        if self.two_phase {
            options.push("two_phase 'true'".into());
        }
        if let Some(origin) = &self.origin {
            options.push(format!("origin {}", literal(origin)?));
        }
        Ok(options.join(", "))
    }
}

/// A string literal for a replication command (standard strings: quotes doubled, no NUL).
fn literal(value: &str) -> Result<String, Error> {
    if value.contains('\0') {
        return Err(Error::config(
            "a replication command value contains a NUL byte",
        ));
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

/// A publication name as an element of pgoutput's comma-separated `publication_names` list: double-quoted,
/// as the server splits the list like identifiers.
fn quote_in_list(name: &str) -> Result<String, Error> {
    if name.is_empty() || name.contains('\0') {
        return Err(Error::config(format!("invalid publication name {name:?}")));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// A replication slot name: the server allows lower-case letters, digits and underscores, at most 63.
fn slot_name(name: &str) -> Result<&str, Error> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(name)
    } else {
        Err(Error::config(format!(
            "invalid replication slot name {name:?}: lower-case letters, digits and underscores, at most 63"
        )))
    }
}

impl Client {
    /// `IDENTIFY_SYSTEM`: the server's system identifier, timeline and current WAL position.
    pub async fn identify_system(&self) -> Result<IdentifySystem, Error> {
        let row = one_row(self, "IDENTIFY_SYSTEM").await?;
        Ok(IdentifySystem {
            system_id: text(&row, 0)?.to_string(),
            timeline: parse_num(text(&row, 1)?, "timeline")?,
            xlogpos: text(&row, 2)?.parse()?,
            dbname: row.get(3).map(str::to_string),
        })
    }

    /// `CREATE_REPLICATION_SLOT`: a new slot, temporary (dropped when the session ends) or not.
    pub async fn create_replication_slot(
        &self,
        name: &str,
        temporary: bool,
        kind: &SlotKind,
    ) -> Result<CreatedSlot, Error> {
        let name = slot_name(name)?;
        let temporary = if temporary { " TEMPORARY" } else { "" };
        let sql = match kind {
            SlotKind::Logical {
                plugin,
                snapshot,
                two_phase,
            } => {
                if plugin.is_empty()
                    || !plugin
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(Error::config(format!(
                        "invalid output plugin name {plugin:?}"
                    )));
                }
                let snapshot = match snapshot {
                    SlotSnapshot::Nothing => "nothing",
                    SlotSnapshot::Export => "export",
                    SlotSnapshot::Use => "use",
                };
                let two_phase = if *two_phase { ", TWO_PHASE" } else { "" };
                format!(
                    "CREATE_REPLICATION_SLOT {name}{temporary} LOGICAL {plugin} (SNAPSHOT '{snapshot}'{two_phase})"
                )
            }
            SlotKind::Physical { reserve_wal } => {
                let reserve = if *reserve_wal { " (RESERVE_WAL)" } else { "" };
                format!("CREATE_REPLICATION_SLOT {name}{temporary} PHYSICAL{reserve}")
            }
        };
        let row = one_row(self, &sql).await?;
        Ok(CreatedSlot {
            slot_name: text(&row, 0)?.to_string(),
            consistent_point: row.get(1).map(str::parse).transpose()?.unwrap_or_default(),
            snapshot_name: row.get(2).map(str::to_string),
            output_plugin: row.get(3).map(str::to_string),
        })
    }

    /// `DROP_REPLICATION_SLOT`; with `wait`, waits until a session using the slot lets it go instead of failing.
    pub async fn drop_replication_slot(&self, name: &str, wait: bool) -> Result<(), Error> {
        let name = slot_name(name)?;
        let wait = if wait { " WAIT" } else { "" };
        self.simple_query(&format!("DROP_REPLICATION_SLOT {name}{wait}"))
            .await
            .map(drop)
    }

    /// `READ_REPLICATION_SLOT` (PostgreSQL 15 and later): the slot's type and restart position, `None` if
    /// there is no such slot.
    pub async fn read_replication_slot(&self, name: &str) -> Result<Option<SlotInfo>, Error> {
        let name = slot_name(name)?;
        let row = one_row(self, &format!("READ_REPLICATION_SLOT {name}")).await?;
        let Some(slot_type) = row.get(0) else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            slot_type: slot_type.to_string(),
            restart_lsn: row.get(1).map(str::parse).transpose()?,
            restart_tli: row
                .get(2)
                .map(|t| parse_num(t, "restart_tli"))
                .transpose()?,
        }))
    }

    /// `TIMELINE_HISTORY`: the name and content of the history file of `timeline` (physical replication).
    pub async fn timeline_history(&self, timeline: u32) -> Result<(String, Vec<u8>), Error> {
        let row = one_row(self, &format!("TIMELINE_HISTORY {timeline}")).await?;
        Ok((
            text(&row, 0)?.to_string(),
            text(&row, 1)?.as_bytes().to_vec(),
        ))
    }

    /// Starts streaming the changes of logical slot `slot` from `start` (use the slot's confirmed position:
    /// [`Lsn`]`(0)` lets the server resume from it) through `pgoutput`.
    ///
    /// The connection must be made with `replication=database`. While the stream lives the client does nothing
    /// else (it borrows the client mutably); [`LogicalReplicationStream::stop`] ends it cleanly, and dropping it
    /// ends it too (the next call reads the rest out).
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// use wasi_pg_client::replication::{LogicalMessage, Lsn, PgOutputOptions};
    /// let options = PgOutputOptions::new(["my_publication"]);
    /// let mut stream = client.start_logical_replication("my_slot", Lsn(0), &options).await?;
    /// while let Some(event) = stream.next().await? {
    ///     if let LogicalMessage::Commit(commit) = &event.message {
    ///         // ... once the transaction is stored durably:
    ///         stream.acknowledge(commit.end_lsn);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn start_logical_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &PgOutputOptions,
    ) -> Result<LogicalReplicationStream<'_>, Error> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            slot_name(slot)?,
            options.to_sql()?
        );
        let inner = ReplicationStream::start(self, &sql, start).await?;
        Ok(LogicalReplicationStream::new(inner))
    }

    /// Starts streaming WAL physically from `start` on `timeline` (the current one when `None`), through
    /// `slot` if given. The connection must be made with `replication=true`.
    pub async fn start_physical_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: Option<u32>,
    ) -> Result<ReplicationStream<'_>, Error> {
        let slot = match slot {
            Some(slot) => format!("SLOT {} ", slot_name(slot)?),
            None => String::new(),
        };
        let timeline = timeline.map_or(String::new(), |t| format!(" TIMELINE {t}"));
        let sql = format!("START_REPLICATION {slot}PHYSICAL {start}{timeline}");
        ReplicationStream::start(self, &sql, start).await
    }
}

/// Runs a replication command and returns its one row.
async fn one_row(client: &Client, sql: &str) -> Result<SimpleQueryRow, Error> {
    client
        .simple_query(sql)
        .await?
        .into_iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| Error::protocol(format!("{sql}: the server returned no row")))
}

fn text(row: &SimpleQueryRow, index: usize) -> Result<&str, Error> {
    row.get(index).ok_or_else(|| {
        Error::protocol(format!(
            "a replication command returned NULL in column {index}"
        ))
    })
}

fn parse_num<T: std::str::FromStr>(value: &str, what: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| Error::protocol(format!("invalid {what} {value:?} from the server")))
}
