-- The status CHECKs of the two hot tables as OR chains instead of IN lists. SQLite evaluates
-- a CHECK's IN list by building a temporary b-tree of its values on every statement run,
-- which for single-row writes cost about a tenth of writing the row; equality tests cost
-- almost nothing. Same constraints, same stored rows: only the schema text changes, which
-- SQLite documents as safe for CHECK constraints (https://sqlite.org/lang_altertable.html,
-- "otherwise change constraints ... writable_schema"). The table that is created and dropped
-- after it changes the schema cookie, so every connection compiles its statements anew.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (status IN
                         (''pending'', ''running'', ''success'', ''failed'', ''cancelled'', ''skipped'', ''invalid''))',
    'CHECK (status = ''pending'' OR status = ''running'' OR status = ''success''
                         OR status = ''failed'' OR status = ''cancelled'' OR status = ''skipped''
                         OR status = ''invalid'')')
WHERE type = 'table' AND name = 'executions';
UPDATE sqlite_schema
SET sql = replace(sql, 'CHECK (status IN (''pending'', ''success'', ''skipped'', ''dead''))',
    'CHECK (status = ''pending'' OR status = ''success'' OR status = ''skipped'' OR status = ''dead'')')
WHERE type = 'table' AND name = 'webhook_deliveries';
PRAGMA writable_schema = RESET;
CREATE TABLE flowrun_schema_changed (x);
DROP TABLE flowrun_schema_changed;
