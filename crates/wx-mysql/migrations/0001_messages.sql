-- wxstream's MySQL schema, version 1. Works on MySQL 8.0 and MariaDB 10.11.
-- utf8mb4 with a binary collation everywhere: emoji and CJK round-trip byte for byte, and ids
-- compare exactly. payload and extra are MEDIUMTEXT holding JSON, not the JSON type, because
-- MySQL 8's JSON type rewrites documents (key order, spacing) and the archive keeps them as sent.

CREATE TABLE IF NOT EXISTS messages (
    msgid            VARCHAR(191)  NOT NULL,
    msgtime          BIGINT        NOT NULL COMMENT 'UTC ms, as WeCom sent it',
    corp_id          VARCHAR(64)   NOT NULL,
    action           VARCHAR(16)   NOT NULL COMMENT 'send | recall | switch',
    msgtype          VARCHAR(32)   NOT NULL,
    sender           VARCHAR(191)  NOT NULL,
    receivers        MEDIUMTEXT    NOT NULL COMMENT 'JSON array of user ids',
    roomid           VARCHAR(191)  NOT NULL,
    conversation_id  VARCHAR(400)  NOT NULL,
    is_external      TINYINT(1)    NOT NULL,
    text             MEDIUMTEXT    NULL     COMMENT 'searchable text',
    payload          MEDIUMTEXT    NOT NULL COMMENT 'the type payload as JSON, as sent',
    extra            MEDIUMTEXT    NULL,
    recalled_msgid   VARCHAR(191)  NULL     COMMENT 'on a recall: the message it recalls',
    recalled_by      VARCHAR(191)  NULL     COMMENT 'on a recalled message: the recall',
    publickey_ver    INT           NULL,
    source_topic     VARCHAR(249)  NOT NULL,
    source_partition INT           NOT NULL,
    source_offset    BIGINT        NOT NULL,
    seq              BIGINT        NULL,
    decrypted_at     BIGINT        NOT NULL,
    ingested_at      TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (msgid, msgtime),
    KEY by_conversation (conversation_id(191), msgtime),
    KEY by_sender (sender, msgtime),
    KEY by_corp_time (corp_id, msgtime)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
PARTITION BY RANGE (msgtime) (PARTITION p_future VALUES LESS THAN MAXVALUE);

CREATE TABLE IF NOT EXISTS recalls (
    corp_id         VARCHAR(64)  NOT NULL,
    recalled_msgid  VARCHAR(191) NOT NULL,
    recall_msgid    VARCHAR(191) NOT NULL,
    recalled_at     BIGINT       NOT NULL,
    PRIMARY KEY (corp_id, recalled_msgid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS rooms (
    corp_id      VARCHAR(64)  NOT NULL,
    roomid       VARCHAR(191) NOT NULL,
    first_seen   BIGINT       NOT NULL,
    last_active  BIGINT       NOT NULL,
    PRIMARY KEY (corp_id, roomid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS room_members (
    corp_id      VARCHAR(64)  NOT NULL,
    roomid       VARCHAR(191) NOT NULL,
    member       VARCHAR(191) NOT NULL,
    first_seen   BIGINT       NOT NULL,
    last_active  BIGINT       NOT NULL,
    PRIMARY KEY (corp_id, roomid, member)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
