-- Capture cost: the index by table keeps one key per table and transaction.
--
-- Migration 014's index by table, (hashtext(table_name), xid, id), took one distinct key per
-- captured change: a second full-width index entry per row, which made capture measurably
-- slower for writers than before 014. Without `id` its keys repeat for every change a
-- transaction makes to a table, and B-tree deduplication stores them as one key with a list
-- of row pointers: the index grows by a few bytes per change instead of a whole entry, and
-- fills (and splits) pages far less often. A consumer of some tables still finds its own
-- tables' changes by it, in xid order; the order of one transaction's changes (by id) is a
-- sort of that transaction's rows only.

DROP INDEX pgtide.changes_table_xid_id;
CREATE INDEX changes_table_xid ON pgtide.changes (hashtext(table_name), xid);
