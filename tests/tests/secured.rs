//! The pipeline with every connection secured (issue 26, item 5): Kafka over SASL_SSL with
//! SCRAM-SHA-512, MariaDB over TLS verified against the CA, the search engine over HTTPS with an
//! API key across two node URLs, S3 over HTTPS; every secret given by reference. The secured
//! engines (`scripts/stack up --secured`) refuse plain text, so a stage that fell back to it
//! could not write and the run would not reconcile; and nothing may land in the plain engines.

use wxstream_tests::e2e::{Pipeline, small_media};
use wxstream_tests::stack_setting;
use wxstream_tests::stores::{self, secure_every_connection};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_connection_secured_the_run_reconciles_and_nothing_goes_in_plain_text() {
    secure_every_connection();
    let brokers = stores::brokers();
    assert_ne!(brokers, stack_setting("WXSTACK_BROKERS"));
    let pipeline =
        Pipeline::start_with_media("secured", &brokers, 3, 20_000, small_media(), |_| {}).await;
    let sink = std::fs::read_to_string(pipeline.dir().join("connectors/sink.yaml")).expect("sink");
    assert!(
        sink.contains("https://") && sink.contains("elasticsearch_api_key: {file:"),
        "the sink reaches the search engine over HTTPS with an API key:\n{sink}"
    );
    let (_processes, tally, media) = pipeline.run_until_reconciled(400).await;
    println!("secured: messages {tally:?}\nmedia {media:?}");
    assert!(media.objects > 0, "files were stored: {media:?}");

    // Nothing reached the plain engines: no topic of the run on the plain broker, no database
    // on the plain MariaDB, no object under the run's prefix in the plain S3 server.
    let plain = wx_kafka::KafkaConfig::new(stack_setting("WXSTACK_BROKERS"));
    for topic in ["raw", "clean", "dead-letter"] {
        let topic = format!("{}wxstream.{topic}", pipeline.names.prefix);
        assert!(
            wx_kafka::partition_count(&plain, &topic).is_err(),
            "{topic} is on the plain broker"
        );
        let secured = stores::kafka_config(&brokers);
        assert!(wx_kafka::partition_count(&secured, &topic).expect("on the secured broker") > 0);
    }
    let plain_mysql = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&stack_setting("WXSTACK_MYSQL_URL"))
        .await
        .expect("the plain MariaDB");
    let databases: Vec<String> = sqlx::query_scalar("SHOW DATABASES")
        .fetch_all(&plain_mysql)
        .await
        .expect("databases");
    assert!(
        !databases.contains(&pipeline.names.database),
        "the run's database is on the plain MariaDB"
    );
    // The secured MariaDB saw TLS connections only (it requires them) and the stages' sessions
    // were among them.
    let secured_mysql = wxstream_tests::pipeline::mysql(&pipeline.names.database).await;
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&secured_mysql)
        .await
        .expect("Ssl_cipher");
    assert!(!cipher.is_empty(), "the test's own session is over TLS");

    // No secret in any stage's log.
    for stage in pipeline.stages() {
        let log = std::fs::read_to_string(pipeline.log(stage)).expect("log");
        for (name, value) in stores::secured_secrets() {
            assert!(
                !log.contains(&value),
                "the {stage} stage's log shows the {name}"
            );
        }
    }
}
