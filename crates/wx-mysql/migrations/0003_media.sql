-- Version 3: the media archive. One row per media item of a message (item 0 for a message that
-- is one file; the item's index for mixed and chatrecord messages), written by the media stage.
-- A row is its download's checkpoint while it runs (status `downloading`: the multipart upload
-- id, the parts stored so far with their ETags, the SDK's index buffer to continue from and the
-- MD5 state of the bytes so far), then the record of where the object is (`stored`) or why it
-- could not be archived (`parked`; the reference is on the dead-letter topic too).
CREATE TABLE IF NOT EXISTS media (
    corp_id       VARCHAR(64)   NOT NULL,
    msgid         VARCHAR(191)  NOT NULL,
    item          INT UNSIGNED  NOT NULL COMMENT '0, or the index in mixed/chatrecord items',
    msgtime       BIGINT        NOT NULL COMMENT 'UTC ms, the message''s',
    kind          VARCHAR(32)   NOT NULL COMMENT 'image | voice | video | emotion | file | ...',
    object_key    VARCHAR(512)  NOT NULL COMMENT 'corp/yyyy/mm/msgid/item in the bucket',
    size          BIGINT        NULL     COMMENT 'bytes stored (or stated, while downloading)',
    md5           CHAR(32)      NULL     COMMENT 'MD5 of the stored object, lower-case hex',
    content_type  VARCHAR(128)  NOT NULL,
    status        VARCHAR(16)   NOT NULL COMMENT 'downloading | stored | parked',
    cause         VARCHAR(1024) NULL     COMMENT 'parked: the class and cause',
    upload_id     VARCHAR(1024) NULL     COMMENT 'downloading: the multipart upload',
    parts         MEDIUMTEXT    NULL     COMMENT 'downloading: JSON [[part number, ETag], ...]',
    next_index    VARCHAR(1024) NULL     COMMENT 'downloading: GetMediaData indexbuf to continue from',
    hasher        VARBINARY(256) NULL    COMMENT 'downloading: MD5 state of the bytes in parts',
    bytes_done    BIGINT        NOT NULL DEFAULT 0 COMMENT 'downloading: bytes in parts',
    attempts      INT           NOT NULL DEFAULT 0 COMMENT 'downloads begun (MD5 mismatches retry)',
    stored_at     TIMESTAMP(3)  NULL,
    updated_at    TIMESTAMP(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (corp_id, msgid, item),
    KEY by_status (status, updated_at),
    KEY by_corp_time (corp_id, msgtime)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
