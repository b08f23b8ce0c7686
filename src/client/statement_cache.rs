//! The per-connection cache of named prepared statements behind [`QueryMode::Cached`](crate::config::QueryMode).
//!
//! Least recently used entries make room for new ones. An evicted [`Statement`] is only dropped here: when no
//! caller holds a clone any more, its drop queues the Close that removes it from the server with the next
//! request, so the cache never leaks statements on the server (`pg_prepared_statements` stays at most
//! `capacity` long).

use std::collections::HashMap;

use crate::proto::statement::Statement;

/// SQL text to its prepared statement, with a use counter for LRU eviction.
pub(crate) struct StatementCache {
    capacity: usize,
    entries: HashMap<String, Entry>,
    /// Increases with every use; an entry's stamp says when it was last used.
    clock: u64,
}

struct Entry {
    statement: Statement,
    last_used: u64,
}

impl StatementCache {
    pub(crate) fn new(capacity: usize) -> StatementCache {
        StatementCache {
            capacity,
            entries: HashMap::new(),
            clock: 0,
        }
    }

    /// Whether the cache is on (a capacity of 0 turns it off).
    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The statement prepared for `sql`, marked as just used.
    pub(crate) fn get(&mut self, sql: &str) -> Option<Statement> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(sql).map(|entry| {
            entry.last_used = clock;
            entry.statement.clone()
        })
    }

    /// Adds a statement, evicting the least recently used one if the cache is full.
    pub(crate) fn insert(&mut self, sql: String, statement: Statement) {
        if !self.enabled() {
            return;
        }
        if !self.entries.contains_key(&sql) && self.entries.len() >= self.capacity {
            // A linear scan: eviction happens once per miss on a full cache, and capacities are small.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(sql, _)| sql.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(
            sql,
            Entry {
                statement,
                last_used: self.clock,
            },
        );
    }

    /// Forgets the statement named `name`, whatever its text (its plan went stale on the server). A linear
    /// scan: this happens only after a stale statement's error.
    pub(crate) fn remove_statement(&mut self, name: &str) {
        self.entries
            .retain(|_, entry| entry.statement.name() != name);
    }

    /// Forgets every statement (the server no longer has them, e.g. after DISCARD ALL).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many statements are cached.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
