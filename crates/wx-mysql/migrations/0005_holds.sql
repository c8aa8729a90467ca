-- Version 5: legal holds. A hold keeps messages (and their media) through retention and erasure:
-- a whole corp's, one user's (messages they sent or received), or one conversation's. Released,
-- a hold stays as a row (who released it, when, why); the audit log records both.
CREATE TABLE IF NOT EXISTS holds (
    id              BIGINT        NOT NULL AUTO_INCREMENT,
    corp_id         VARCHAR(64)   NOT NULL,
    scope           VARCHAR(16)   NOT NULL COMMENT 'corp | user | conversation',
    subject         VARCHAR(400)  NOT NULL COMMENT 'the user id or conversation id; empty for a corp',
    reason          VARCHAR(1024) NOT NULL,
    set_by          VARCHAR(191)  NOT NULL,
    set_at_ms       BIGINT        NOT NULL,
    released_by     VARCHAR(191)  NULL,
    released_at_ms  BIGINT        NULL,
    release_reason  VARCHAR(1024) NULL,
    PRIMARY KEY (id),
    KEY active_by_corp (corp_id, released_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
