-- COPY as psql runs it, compared byte for byte with `psql -X -q -A -t -v ON_ERROR_STOP=1`.
-- The data of COPY FROM STDIN follows its statement's line up to `\.`; psql prints nothing for a
-- COPY under -q, and COPY TO STDOUT writes the data as the server sends it.
CREATE TEMP TABLE fruit (id int PRIMARY KEY, name text, price numeric(6, 2), note text);

COPY fruit FROM STDIN;
1	apple	0.50	\N
2	pear	1.25	tab\there
3	plum	0.99	back\\slash
\.
SELECT id, name, price, coalesce(note, '<null>') FROM fruit ORDER BY id;

COPY fruit (id, name, price, note) FROM STDIN (FORMAT csv, HEADER);
id,name,price,note
4,"cherry, red",2.00,"multi
line"
5,"say ""hi""",0.10,
6,,3.00,""
\.
SELECT id, coalesce(name, '<null>'), coalesce(note, '<null>') FROM fruit WHERE id >= 4 ORDER BY id;

-- The rest of the COPY's line runs after the data; a statement begun there continues past it.
COPY fruit (id, name) FROM STDIN; SELECT
7	kiwi
8	lime
\.
  count(*) FROM fruit;

COPY fruit TO STDOUT;
COPY (SELECT id, name FROM fruit WHERE id IN (4, 5) ORDER BY id) TO STDOUT (FORMAT csv, HEADER, FORCE_QUOTE *);
COPY (SELECT g, g * 1.5, repeat('ab', g) FROM generate_series(1, 3) g) TO STDOUT (FORMAT csv, DELIMITER '|');
COPY (SELECT id, name, price FROM fruit WHERE id <= 3 ORDER BY id) TO STDOUT (FORMAT binary);
SELECT 'after binary';

-- A big COPY: many CopyData messages in both directions.
CREATE TEMP TABLE numbers (n int);
INSERT INTO numbers SELECT generate_series(1, 20000);
COPY numbers TO STDOUT;
SELECT sum(n) FROM numbers;

-- A bad row: the server's error ends the script (ON_ERROR_STOP), and nothing of that COPY stays.
COPY fruit (id, name) FROM STDIN;
9	fig
ten	bad
11	date
\.
SELECT 'must not run';
