-- Compared byte for byte with `psql -X -q -A -t -v ON_ERROR_STOP=1 -f script.sql`.
-- Every object is temporary, so psql and the example can run it against the same database.
-- The last statement fails on purpose, and the one after it must not run.

SET TimeZone = 'Europe/Berlin';
SHOW TimeZone;

CREATE TEMP TABLE items (
    id      int PRIMARY KEY,
    small   smallint,
    big     bigint,
    price   numeric(12, 3),
    ratio   float8,
    label   text,
    flag    bool,
    born    date
);

INSERT INTO items VALUES
    (1, 1, 10000000000, 9.5, 0.25, 'plain', true, '2024-02-29'),
    (2, -2, -9223372036854775808, NULL, -1.5e-10, 'pipe|inside', false, NULL),
    (3, NULL, NULL, 0, NULL, NULL, NULL, '1999-12-31'),
    (4, 32767, 9223372036854775807, -123456789.125, 'NaN', 'it''s "quoted"', NULL, 'infinity'),
    (5, -32768, 0, 0.001, '-Infinity', '', true, '0044-03-15 BC');

-- Integers of every width, negatives included.
SELECT 32767::smallint, (-32768)::smallint, 2147483647, (-2147483648)::int,
       9223372036854775807, (-9223372036854775808)::bigint, 0, -1;

-- Floats: shortest round-trip output, signed zero, extremes, NaN and infinities.
SELECT 1.5::float8, '-0'::float8, 1e-300::float8, 1.7976931348623157e308::float8,
       'NaN'::float8, 'Infinity'::float8, '-Infinity'::float4, 0.1::float4, 1 / 3::float8;

-- Numeric keeps its scale; NaN and infinities; very small and very large.
SELECT 'NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric, 1.50::numeric(10, 2),
       0.000000000000000000000000000001::numeric, 123456789012345678901234567890.123456789::numeric,
       -0.5::numeric, 1e100::numeric;

-- Text: the field separator, quotes, unicode, an embedded newline, a tab and a carriage return.
SELECT 'a|b', 'it''s', '"double"', 'ünïcødé ✓ 日本 🐘', E'line one\nline two', E'tab\there',
       E'cr\rhere', '', '  padded  ';

SELECT true, false, NULL::bool;

-- NULL first, last and between; the empty string next to NULL.
SELECT NULL, 1, NULL, '', NULL;

SELECT '2024-02-29'::date, '13:45:30.123456'::time, '2024-02-29 13:45:30.5'::timestamp,
       '2024-07-01 12:00:00+00'::timestamptz, '2024-01-01 12:00:00+00'::timestamptz,
       '1 year 2 mons 3 days 04:05:06.7'::interval, '-1 day -00:00:01'::interval,
       'infinity'::timestamp, '4713-01-01 BC'::date, '12:00+05:30'::timetz;

SELECT 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid;

SELECT '{"b": 1, "a": [1, 2, "x|y"]}'::json, '{"b": 1, "a": [1, 2, "x|y"], "a": null}'::jsonb;

SELECT '\xdeadbeef'::bytea, ''::bytea, 'abc'::bytea, NULL::bytea, E'\\000\\377'::bytea;

SELECT ARRAY[1, 2, 3], ARRAY['a', NULL, 'b c', 'd,e', 'q"uote', '']::text[],
       ARRAY[[1, 2], [3, 4]], '{}'::int[], ARRAY[1.5, NULL]::float8[];

-- A dollar-quoted function body with semicolons in it.
CREATE FUNCTION pg_temp.add_one(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    -- a comment; inside the body
    RETURN n + 1;
END;
$$;
SELECT pg_temp.add_one(41);

CREATE FUNCTION pg_temp.greet(who text) RETURNS text LANGUAGE sql AS $body$
    SELECT 'hello; ' || who || ' $$ not the end $$'
$body$;
SELECT pg_temp.greet('world');

-- A SQL-standard body: psql keeps the `;` between BEGIN ATOMIC and END.
CREATE FUNCTION pg_temp.twice(n int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
    SELECT n * 2;
END;
SELECT pg_temp.twice(21);

DO $do$
BEGIN
    INSERT INTO items (id, label) VALUES (6, 'from DO; with semicolon');
    RAISE NOTICE 'DO block ran; notices go to stderr';
END
$do$;

SELECT 'semi;colon', 'two;;', E'esc\';aped', $$dollar;quoted$$, U&'\0041;';
SELECT 1 AS "col;name", 2 AS "quote""d";

-- A comment; with semicolons; that must not split anything;
SELECT /* inline; comment /* nested; */ still; */ 'after comments'; -- trailing; comment

-- psql does not split on `;` inside parentheses: a rule with two actions.
CREATE TEMP TABLE audit (note text);
CREATE RULE items_audit AS ON UPDATE TO items DO ALSO (
    INSERT INTO audit VALUES ('update;1');
    INSERT INTO audit VALUES ('update;2')
);

-- Under -q, UPDATE and DELETE print nothing.
UPDATE items SET label = 'changed|' WHERE id = 2;
DELETE FROM items WHERE id = 3;
SELECT note FROM audit ORDER BY note;

INSERT INTO items (id, label) VALUES (10, 'returned') RETURNING id, label, flag;

-- An empty result set prints nothing, and so does a result without columns.
SELECT * FROM items WHERE false;
SELECT;

SELECT id, small, big, price, ratio, label, flag, born FROM items ORDER BY id DESC;

PREPARE plus_one(int) AS SELECT $1 + 1;
EXECUTE plus_one(1);
DEALLOCATE plus_one;

SELECT 'one'; SELECT 'two';   SELECT 'three';

SELECT g, g * g, repeat('ab|', g) FROM generate_series(1, 5) AS g ORDER BY g;
SELECT length(repeat('x', 100000)), md5(string_agg(g::text, ',')) FROM generate_series(1, 1000) AS g;
SELECT g FROM generate_series(1, 1000) AS g;

-- The first error stops the script.
SELECT * FROM missing_table;
SELECT 'must not run';
