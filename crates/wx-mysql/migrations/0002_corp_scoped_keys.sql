-- Version 2: a message is identified by its corp too. A msgid is unique only within its corp
-- (callback msgids repeat AgentIDs such as 1000002 that every corp has), so under version 1's
-- key (msgid, msgtime) two corps' messages could overwrite one row. msgtime stays in the key
-- because the table is partitioned by it.
--
-- On MySQL 8 and MariaDB this rebuilds the table (it copies every row, and writes wait for it):
-- on a large table, run it before upgrading the sink with an online schema-change tool
-- (gh-ost, pt-online-schema-change), then let the sink record it as applied.
ALTER TABLE messages DROP PRIMARY KEY, ADD PRIMARY KEY (corp_id, msgid, msgtime);
