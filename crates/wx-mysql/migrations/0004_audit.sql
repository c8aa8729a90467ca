-- Version 4: the audit log of operator actions (retention runs, holds, erasures, exports,
-- redrives, pause/resume/stop/restart, offset changes, daily digests). Append-only: each entry
-- carries the SHA-256 of the one before it (a hash chain, `wxstream audit verify`), and the
-- triggers below refuse every UPDATE and DELETE, whoever asks. Removing them takes the TRIGGER
-- privilege, which the stages' user should not keep once the migrations ran (README
-- "Retention, holds, erasure and export"); the audit topic holds a second copy of every entry.
--
-- MySQL 8 with binary logging on (its default) lets a user without SUPER create triggers only
-- with `log_bin_trust_function_creators = 1` (docker-compose.yml sets it).
CREATE TABLE IF NOT EXISTS audit_log (
    seq          BIGINT        NOT NULL COMMENT '1, 2, 3, ... without gaps',
    at_ms        BIGINT        NOT NULL COMMENT 'UTC ms, when the entry was appended',
    principal    VARCHAR(191)  NOT NULL COMMENT 'who: the authenticated principal, or os:<user> for a CLI command',
    action       VARCHAR(64)   NOT NULL COMMENT 'what, e.g. redrive, connector.pause, hold.add',
    arguments    MEDIUMTEXT    NOT NULL COMMENT 'JSON object, as given',
    counts       MEDIUMTEXT    NOT NULL COMMENT 'JSON object: what it changed, per store',
    outcome      VARCHAR(1024) NOT NULL COMMENT 'ok, or the error',
    prev_sha256  CHAR(64)      NOT NULL COMMENT 'the previous entry''s sha256 (64 zeros for the first)',
    sha256       CHAR(64)      NOT NULL COMMENT 'SHA-256 of this entry''s canonical form',
    PRIMARY KEY (seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit_log is append-only: entries are never updated';

CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit_log is append-only: entries are never deleted';
