-- wxstream stats for BI, in MySQL 8 / MariaDB: the table a Kafka Connect JDBC sink upserts the
-- stats topic into (one row per record key, the latest record wins, exactly like the compacted
-- topic), and the views Grafana and Superset read. See docs/bi.md. The times are the records'
-- timestamp-millis fields (Connect's Timestamp), stored as UTC DATETIME(3); the per-msgtype
-- breakdown (a map) is dropped on the way, as a JDBC sink cannot write a map.

CREATE TABLE IF NOT EXISTS stats_window_counts (
    window_key      VARCHAR(600) NOT NULL COMMENT 'the record key: corp/group/size/start[/pN]',
    corp_id         VARCHAR(64)  NOT NULL,
    group_id        VARCHAR(400) NOT NULL,
    group_kind      VARCHAR(16)  NOT NULL COMMENT 'room | conversation | sender',
    window_size_ms  BIGINT       NOT NULL,
    window_start    DATETIME(3)  NOT NULL COMMENT 'UTC, inclusive',
    window_end      DATETIME(3)  NOT NULL COMMENT 'UTC, exclusive',
    total           BIGINT       NOT NULL COMMENT 'distinct msgids',
    `final`         BOOLEAN      NOT NULL,
    revision        INT          NOT NULL,
    emitted_at      DATETIME(3)  NOT NULL COMMENT 'UTC',
    PRIMARY KEY (window_key),
    KEY by_window (window_size_ms, window_start)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Messages per group and minute. Per-sender groups arrive as one share per clean partition
-- (keys ending /pN); the SUM adds the shares up, and is the plain count for every other group.
CREATE OR REPLACE VIEW stats_group_minute AS
SELECT corp_id,
       group_id,
       group_kind,
       window_start AS minute_utc,
       SUM(total) AS messages,
       MIN(`final`) AS is_final
FROM stats_window_counts
WHERE window_size_ms = 60000
GROUP BY corp_id, group_id, group_kind, window_start;

-- Messages per group and hour, from the 1-hour windows.
CREATE OR REPLACE VIEW stats_group_hour AS
SELECT corp_id,
       group_id,
       group_kind,
       window_start AS hour_utc,
       SUM(total) AS messages,
       MIN(`final`) AS is_final
FROM stats_window_counts
WHERE window_size_ms = 3600000
GROUP BY corp_id, group_id, group_kind, window_start;
