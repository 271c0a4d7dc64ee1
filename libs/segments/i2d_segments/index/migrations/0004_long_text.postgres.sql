-- A url of any length is a row like any other. A btree entry holds at most ~2.7 KB, so a
-- 10 KB url (a data: url, a signed CDN link) made its whole segment's commit fail; the url
-- lookup is an equality, which a hash index answers with entries of 4 bytes per row, whatever
-- the url's length. (SQLite's b-trees have no such limit: 0004_long_text.sqlite.sql is empty.)
DROP INDEX samples_url;
CREATE INDEX samples_url ON samples USING hash (url);
