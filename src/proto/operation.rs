//! What an operation on the database is called in telemetry: OpenTelemetry's `db.operation.name` (the first
//! keyword of the statement: `SELECT`, `INSERT`, `COPY`, ...) and `db.collection.name` (the one table it
//! names, when it names exactly one), read from SQL text.
//!
//! A small lexer skips what could hide or fake a keyword (comments, string literals of every kind, quoted
//! identifiers) and never allocates while reading; only the two results are copied out. It reads at most
//! [`SCAN_LIMIT`] bytes, so a megabyte of VALUES costs no more than a short query. When the text does not say
//! plainly, the answer is `None`: a collection name is given only for statements that name a single table,
//! as the conventions ask, and never for WITH queries, joins, set operations or subqueries with their own FROM.

use std::borrow::Cow;

/// How much SQL text is read; beyond it, no collection is reported (the tail might name another one).
const SCAN_LIMIT: usize = 4096;
/// The longest keyword taken as an operation name (longer first words are not SQL commands).
const MAX_KEYWORD: usize = 24;
/// The longest collection name reported: a schema and a table of at most 63 bytes each, quoted.
const MAX_COLLECTION: usize = 160;

/// The operation name and collection of a statement; both `None` when the text does not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Operation {
    /// The command, upper-cased: `SELECT`, `INSERT`, `CREATE`, ...; for a WITH query, its main statement.
    pub(crate) name: Option<Cow<'static, str>>,
    /// The one table the statement names, as written (`users`, `public.users`, `"Users"`).
    pub(crate) collection: Option<Box<str>>,
}

impl Operation {
    /// Reads `sql`.
    pub(crate) fn of(sql: &str) -> Operation {
        let text = truncated(sql);
        let tokens = Lexer::new(text);
        let mut reader = Reader {
            tokens,
            depth: 0,
            complete: text.len() == sql.len(),
            ended: false,
        };
        reader.statement()
    }

    /// The operation of several statements run as one batch (a pipeline): `BATCH <name>` when all share a
    /// name, `BATCH` otherwise; the collection when all name the same one.
    pub(crate) fn batch<'a>(operations: impl IntoIterator<Item = &'a Operation>) -> Operation {
        let mut operations = operations.into_iter();
        let Some(first) = operations.next() else {
            return Operation {
                name: Some(Cow::Borrowed("BATCH")),
                collection: None,
            };
        };
        let (mut name, mut collection) = (first.name.clone(), first.collection.clone());
        for operation in operations {
            if name != operation.name {
                name = None;
            }
            if collection != operation.collection {
                collection = None;
            }
        }
        Operation {
            name: Some(match name {
                Some(name) => Cow::Owned(format!("BATCH {name}")),
                None => Cow::Borrowed("BATCH"),
            }),
            collection,
        }
    }
}

/// The longest prefix of `sql` within [`SCAN_LIMIT`] that ends on a character boundary.
fn truncated(sql: &str) -> &str {
    if sql.len() <= SCAN_LIMIT {
        return sql;
    }
    let mut end = SCAN_LIMIT;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    &sql[..end]
}

/// The tokens that matter for naming an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted identifier or keyword (also numbers and parameters: `1`, `$1`).
    Word(&'a str),
    /// A double-quoted identifier, quotes included.
    Quoted(&'a str),
    Open,
    Close,
    Comma,
    Dot,
    Semicolon,
    /// Any other operator or punctuation.
    Other,
}

struct Lexer<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Lexer<'a> {
        Lexer { text, at: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        &self.text.as_bytes()[self.at..]
    }

    /// Skips whitespace and comments (`--` to the end of the line, `/* */` nested as PostgreSQL nests them).
    fn skip_blank(&mut self) {
        loop {
            let rest = self.rest();
            if rest.first().is_some_and(u8::is_ascii_whitespace) {
                self.at += 1;
            } else if rest.starts_with(b"--") {
                self.at += rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            } else if rest.starts_with(b"/*") {
                let mut depth = 0usize;
                let mut i = 0;
                while i < rest.len() {
                    if rest[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if rest[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                self.at += i;
            } else {
                return;
            }
        }
    }

    /// Skips a literal quoted by `quote` from the current position (its opening quote), doubled quotes
    /// included; with `backslashes`, a backslash escapes the next byte (E'...' strings).
    fn skip_quoted(&mut self, quote: u8, backslashes: bool) -> &'a str {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let mut i = self.at + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if backslashes => i += 2,
                b if b == quote => {
                    if bytes.get(i + 1) == Some(&quote) {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                }
                _ => i += 1,
            }
        }
        self.at = i.min(bytes.len());
        &self.text[start..self.at]
    }

    /// Skips a dollar-quoted string (`$$...$$`, `$tag$...$tag$`) if one starts here.
    fn skip_dollar_quoted(&mut self) -> bool {
        let rest = self.rest();
        let tag_len = match rest[1..].iter().position(|&b| b == b'$') {
            Some(n)
                if rest[1..=n]
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'_')
                    && !rest.get(1).is_some_and(u8::is_ascii_digit) =>
            {
                n + 2
            }
            _ => return false,
        };
        let tag = &rest[..tag_len];
        let body = &rest[tag_len..];
        let end = body
            .windows(tag_len)
            .position(|w| w == tag)
            .map_or(rest.len(), |p| tag_len + p + tag_len);
        self.at += end;
        true
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            self.skip_blank();
            let rest = self.rest();
            let &first = rest.first()?;
            return Some(match first {
                b'(' => self.punct(Token::Open),
                b')' => self.punct(Token::Close),
                b',' => self.punct(Token::Comma),
                b'.' => self.punct(Token::Dot),
                b';' => self.punct(Token::Semicolon),
                b'"' => Token::Quoted(self.skip_quoted(b'"', false)),
                b'\'' => {
                    self.skip_quoted(b'\'', false);
                    Token::Other
                }
                b'e' | b'E' if rest.get(1) == Some(&b'\'') => {
                    self.at += 1;
                    self.skip_quoted(b'\'', true);
                    Token::Other
                }
                b'$' if self.skip_dollar_quoted() => continue,
                b if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80 => {
                    let start = self.at;
                    let len = rest
                        .iter()
                        .position(|&b| {
                            !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80)
                        })
                        .unwrap_or(rest.len());
                    self.at += len;
                    Token::Word(&self.text[start..self.at])
                }
                _ => self.punct(Token::Other),
            });
        }
    }
}

impl<'a> Lexer<'a> {
    fn punct(&mut self, token: Token<'a>) -> Token<'a> {
        self.at += 1;
        token
    }
}

/// Walks the tokens of one statement, keeping the parenthesis depth.
struct Reader<'a> {
    tokens: Lexer<'a>,
    depth: u32,
    /// Whether the whole text is read (not cut at [`SCAN_LIMIT`]).
    complete: bool,
    /// Whether the statement ended at a `;`: nothing after it is read.
    ended: bool,
}

impl<'a> Reader<'a> {
    /// The next token of the statement; `None` at its end (the text's end or a `;` outside parentheses).
    fn next(&mut self) -> Option<Token<'a>> {
        if self.ended {
            return None;
        }
        let token = self.tokens.next()?;
        match token {
            Token::Open => self.depth += 1,
            Token::Close => self.depth = self.depth.saturating_sub(1),
            Token::Semicolon if self.depth == 0 => {
                self.ended = true;
                return None;
            }
            _ => {}
        }
        Some(token)
    }

    fn statement(&mut self) -> Operation {
        let Some(Token::Word(first)) = self.next() else {
            return Operation::default();
        };
        let Some(name) = keyword(first) else {
            return Operation::default();
        };
        if name == "WITH" {
            // The main statement follows the common table expressions, outside their parentheses.
            const MAIN: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"];
            let main = std::iter::from_fn(|| self.next().map(|t| (t, self.depth)))
                .find_map(|(token, depth)| match token {
                    Token::Word(w) if depth == 0 => MAIN.iter().find(|k| w.eq_ignore_ascii_case(k)),
                    _ => None,
                })
                .map(|k| Cow::Borrowed(*k));
            return Operation {
                name: main.or(Some(name)),
                collection: None,
            };
        }
        let collection = match &*name {
            "SELECT" => self.select_collection(),
            "INSERT" | "MERGE" => self.after_keywords(&["INTO"], &[]),
            "UPDATE" => self.after_keywords(&[], &["ONLY"]),
            "DELETE" => self.after_keywords(&["FROM"], &["ONLY"]),
            "TRUNCATE" => self.after_keywords(&[], &["TABLE", "ONLY"]),
            // COPY names one table or a query; its FROM and TO name files, not tables.
            "COPY" => match self.next() {
                Some(first) => self.qualified_name(first).map(|(name, _)| name.into()),
                None => None,
            },
            _ => None,
        };
        Operation {
            name: Some(name),
            collection,
        }
    }

    /// The table after the `required` keywords (and any of the `optional` ones), if no other table follows.
    fn after_keywords(&mut self, required: &[&str], optional: &[&str]) -> Option<Box<str>> {
        let mut token = self.next()?;
        for keyword in required {
            match token {
                Token::Word(w) if w.eq_ignore_ascii_case(keyword) => token = self.next()?,
                _ => return None,
            }
        }
        while let Token::Word(w) = token
            && optional.iter().any(|k| w.eq_ignore_ascii_case(k))
        {
            token = self.next()?;
        }
        let (name, after) = self.qualified_name(token)?;
        if brings_another_table(after) {
            return None;
        }
        self.only_collection(name)
    }

    /// The table of `SELECT ... FROM name`, when it is the statement's only FROM.
    fn select_collection(&mut self) -> Option<Box<str>> {
        loop {
            match self.next()? {
                Token::Word(w) if self.depth == 0 && w.eq_ignore_ascii_case("FROM") => break,
                Token::Word(w) if names_a_table(w) => return None,
                _ => {}
            }
        }
        let first = self.next()?;
        let (name, mut after) = self.qualified_name(first)?;
        // An alias: `FROM users u`, `FROM users AS u`.
        if let Some(Token::Word(w)) = after
            && w.eq_ignore_ascii_case("AS")
        {
            self.next();
            after = self.next();
        } else if let Some(Token::Word(w)) = after
            && !is_clause(w)
        {
            after = self.next();
        }
        if brings_another_table(after) {
            return None;
        }
        self.only_collection(name)
    }

    /// `name` if the rest of the statement names no other table (no FROM, JOIN, USING or set operation),
    /// and the text was read to its end.
    fn only_collection(&mut self, name: &str) -> Option<Box<str>> {
        while let Some(token) = self.next() {
            if let Token::Word(w) = token
                && names_a_table(w)
            {
                return None;
            }
        }
        // Only a text cut before the statement's end leaves doubt.
        (self.complete || self.ended).then(|| name.into())
    }

    /// A possibly qualified name starting at `first` (`t`, `s.t`, `"S"."T"`), and the token after it.
    fn qualified_name(&mut self, first: Token<'a>) -> Option<(&'a str, Option<Token<'a>>)> {
        let text = self.tokens.text;
        // `first` is the token just read, so it ends where the lexer stands.
        let start = match first {
            Token::Word(w) | Token::Quoted(w) if !is_clause(w) => self.tokens.at - w.len(),
            _ => return None,
        };
        let mut end = self.tokens.at;
        let mut after = self.next();
        while after == Some(Token::Dot) {
            match self.next() {
                Some(Token::Word(_) | Token::Quoted(_)) => {
                    end = self.tokens.at;
                    after = self.next();
                }
                _ => return None,
            }
        }
        let name = &text[start..end];
        (name.len() <= MAX_COLLECTION).then_some((name, after))
    }
}

/// Whether the token after a table name brings in another one (a comma, a JOIN, ...).
fn brings_another_table(after: Option<Token<'_>>) -> bool {
    match after {
        Some(Token::Comma) => true,
        Some(Token::Word(w)) => names_a_table(w),
        _ => false,
    }
}

/// A word that brings another table into a statement.
fn names_a_table(word: &str) -> bool {
    ["FROM", "JOIN", "USING", "UNION", "INTERSECT", "EXCEPT"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// A word that starts a clause after a table name (so it is not an alias).
fn is_clause(word: &str) -> bool {
    [
        "WHERE",
        "GROUP",
        "HAVING",
        "WINDOW",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "FETCH",
        "FOR",
        "JOIN",
        "INNER",
        "LEFT",
        "RIGHT",
        "FULL",
        "CROSS",
        "NATURAL",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "RETURNING",
        "SET",
        "VALUES",
        "DEFAULT",
        "SELECT",
        "FROM",
        "TO",
        "WITH",
        "ON",
        "USING",
        "TABLESAMPLE",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

/// `word` upper-cased if it can be a command keyword; the common ones without allocating.
fn keyword(word: &str) -> Option<Cow<'static, str>> {
    const COMMON: [&str; 16] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "WITH",
        "COPY",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
    ];
    if word.is_empty() || word.len() > MAX_KEYWORD || !word.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return None;
    }
    Some(match COMMON.iter().find(|k| word.eq_ignore_ascii_case(k)) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(word.to_ascii_uppercase()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sql: &str) -> (Option<String>, Option<String>) {
        let op = Operation::of(sql);
        (
            op.name.map(Cow::into_owned),
            op.collection.map(String::from),
        )
    }

    fn named(name: &str, collection: Option<&str>) -> (Option<String>, Option<String>) {
        (Some(name.to_string()), collection.map(String::from))
    }

    #[test]
    fn single_table_statements_name_their_table() {
        for (sql, name, table) in [
            ("SELECT a, b FROM users WHERE id = $1", "SELECT", "users"),
            (
                "select * from public.users u order by a, b",
                "SELECT",
                "public.users",
            ),
            (
                "SELECT x FROM \"My Table\" AS t LIMIT 1",
                "SELECT",
                "\"My Table\"",
            ),
            (
                "insert into orders (id, qty) values ($1, (SELECT 2))",
                "INSERT",
                "orders",
            ),
            (
                "UPDATE ONLY stock SET n = n - 1 WHERE id = 3",
                "UPDATE",
                "stock",
            ),
            ("DELETE FROM s.t WHERE a IN (1, 2)", "DELETE", "s.t"),
            (
                "COPY items (id, name) FROM STDIN (FORMAT binary)",
                "COPY",
                "items",
            ),
            ("TRUNCATE TABLE logs", "TRUNCATE", "logs"),
            (
                "  -- why\n /* a /* nested */ comment */ SELECT 1 FROM t;",
                "SELECT",
                "t",
            ),
        ] {
            assert_eq!(read(sql), named(name, Some(table)), "{sql}");
        }
    }

    #[test]
    fn several_tables_or_none_give_no_collection() {
        for (sql, name) in [
            ("SELECT 1", "SELECT"),
            ("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT"),
            ("SELECT * FROM a, b", "SELECT"),
            ("SELECT * FROM a WHERE id IN (SELECT id FROM b)", "SELECT"),
            ("SELECT a FROM t UNION SELECT 1", "SELECT"),
            ("SELECT * FROM (SELECT 1) s", "SELECT"),
            ("INSERT INTO t SELECT * FROM u", "INSERT"),
            ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", "UPDATE"),
            ("DELETE FROM t USING u WHERE t.id = u.id", "DELETE"),
            ("TRUNCATE a, b", "TRUNCATE"),
            ("COPY (SELECT 1) TO STDOUT", "COPY"),
            ("CREATE TABLE t (id int)", "CREATE"),
            (
                "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
                "MERGE",
            ),
        ] {
            assert_eq!(read(sql), named(name, None), "{sql}");
        }
    }

    #[test]
    fn literals_and_comments_hide_nothing_and_fake_nothing() {
        assert_eq!(read("SELECT 'FROM x' FROM t"), named("SELECT", Some("t")));
        assert_eq!(
            read("SELECT E'\\' FROM x' FROM t"),
            named("SELECT", Some("t"))
        );
        assert_eq!(
            read("SELECT $$ FROM x $$, $q$;$q$ FROM t"),
            named("SELECT", Some("t"))
        );
        assert_eq!(
            read("SELECT \"FROM\" FROM t -- FROM u"),
            named("SELECT", Some("t"))
        );
        assert_eq!(read("/* only a comment */"), (None, None));
        assert_eq!(read(""), (None, None));
        assert_eq!(read("(SELECT 1)"), (None, None));
    }

    #[test]
    fn with_queries_take_the_main_statement() {
        let sql = "WITH x AS (SELECT * FROM a), y AS (DELETE FROM b RETURNING *) INSERT INTO c SELECT * FROM x";
        assert_eq!(read(sql), named("INSERT", None));
        assert_eq!(
            read("with recursive r(n) as (select 1) select n from r"),
            named("SELECT", None)
        );
        assert_eq!(read("WITH"), named("WITH", None));
    }

    #[test]
    fn statements_after_the_first_do_not_count() {
        assert_eq!(
            read("INSERT INTO t VALUES (1); SELECT * FROM u JOIN v"),
            named("INSERT", Some("t"))
        );
        assert_eq!(read("begin; select 1"), named("BEGIN", None));
        assert_eq!(read("vacuum analyze"), named("VACUUM", None));
    }

    #[test]
    fn long_or_odd_text_is_read_within_bounds() {
        let long = format!("INSERT INTO t VALUES {}", "(1),".repeat(5000));
        assert_eq!(read(&long), named("INSERT", None));
        let tail = format!("SELECT 1 FROM t WHERE a = '{}é'", "x".repeat(SCAN_LIMIT));
        assert_eq!(read(&tail).0.as_deref(), Some("SELECT"));
        assert_eq!(read("12 FROM t"), (None, None));
        assert_eq!(read("SELECT 'unterminated FROM t"), named("SELECT", None));
        assert_eq!(read("SELECT $1 FROM t"), named("SELECT", Some("t")));
        assert_eq!(read("SELECT /* unterminated"), named("SELECT", None));
        assert_eq!(read("SELECT 1 FROM t."), named("SELECT", None));
    }

    #[test]
    fn batches_share_a_name_or_say_batch() {
        let insert = Operation::of("INSERT INTO t VALUES (1)");
        let select = Operation::of("SELECT * FROM t");
        let same = Operation::batch([&insert, &insert, &insert]);
        assert_eq!(same.name.as_deref(), Some("BATCH INSERT"));
        assert_eq!(same.collection.as_deref(), Some("t"));
        let mixed = Operation::batch([&insert, &select]);
        assert_eq!(mixed.name.as_deref(), Some("BATCH"));
        assert_eq!(mixed.collection.as_deref(), Some("t"));
        let other = Operation::batch([&insert, &Operation::of("SELECT 1")]);
        assert_eq!(other.collection, None);
    }
}
