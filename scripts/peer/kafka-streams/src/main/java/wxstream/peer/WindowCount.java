package wxstream.peer;

import java.io.File;
import java.nio.file.Files;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;

/**
 * The stats stage's peer for `wxstream bench stats-peer`: counts wxstream's clean topic in
 * tumbling event-time windows (msgtime) with the same size and grace, per clean key
 * (`corp/conversation`, which is the stats stage's group: the room, else the conversation),
 * switch records excluded, and writes each window's final count once it closes
 * (`suppress(untilWindowCloses)`), as the stats stage does. Records are wxstream's framed Avro
 * (a magic byte, a 4-byte schema id, then the datum of schemas/clean_message.avsc).
 *
 * <p>Arguments: bootstrap, input topic, output topic, application id, window ms, grace ms,
 * schema file, records to wait for (0: run until killed). Prints one line
 * {@code REPORT {json}} once it has consumed the records, and one line per emitted window's
 * delay ({@code DELAY ms}, wall clock minus window end minus grace) as they come.
 */
public final class WindowCount {
    private WindowCount() {}

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String input = args[1];
        String output = args[2];
        String application = args[3];
        long window = Long.parseLong(args[4]);
        long grace = Long.parseLong(args[5]);
        Schema schema = new Schema.Parser().parse(new File(args[6]));
        long expected = Long.parseLong(args[7]);

        Serde<GenericRecord> clean = Serdes.serdeFrom(refuse(), framedAvro(schema));
        TimestampExtractor msgtime = (record, partitionTime) ->
                ((Long) ((GenericRecord) record.value()).get("msgtime"));
        AtomicLong consumed = new AtomicLong();
        AtomicLong first = new AtomicLong();
        AtomicLong done = new AtomicLong();
        AtomicLong emitted = new AtomicLong();

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.String(), clean).withTimestampExtractor(msgtime))
                .peek((k, v) -> {
                    long n = consumed.incrementAndGet();
                    if (n == 1) {
                        first.set(System.currentTimeMillis());
                    }
                    if (n == expected) {
                        done.set(System.currentTimeMillis());
                    }
                })
                .filter((k, v) -> !"switch".equals(v.get("action").toString()))
                .groupByKey(Grouped.with(Serdes.String(), clean))
                .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(window), Duration.ofMillis(grace)))
                .count()
                .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
                .toStream()
                .peek((w, c) -> {
                    emitted.incrementAndGet();
                    long delay = System.currentTimeMillis() - (w.window().end() + grace);
                    System.out.println("DELAY " + delay);
                })
                .map((w, c) -> KeyValue.pair(w.key() + "/" + window + "/" + w.window().start(), c.toString()))
                .to(output, Produced.with(Serdes.String(), Serdes.String()));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, application);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Runtime.getRuntime().availableProcessors());
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.STATE_DIR_CONFIG, Files.createTempDirectory("wxstream-peer").toString());
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        Runtime.getRuntime().addShutdownHook(new Thread(streams::close));
        streams.start();
        while (expected == 0 || done.get() == 0) {
            Thread.sleep(50);
        }
        double seconds = Math.max(1, done.get() - first.get()) / 1000.0;
        System.out.println("REPORT {\"records\": " + consumed.get() + ", \"seconds\": " + seconds
                + ", \"records_per_second\": " + (expected / seconds)
                + ", \"windows_emitted\": " + emitted.get() + "}");
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }

    private static Deserializer<GenericRecord> framedAvro(Schema schema) {
        GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
        // One deserializer serves every stream thread: a decoder per thread.
        ThreadLocal<BinaryDecoder> decoders = new ThreadLocal<>();
        return new Deserializer<>() {
            @Override
            public GenericRecord deserialize(String topic, byte[] data) {
                try {
                    BinaryDecoder decoder =
                            DecoderFactory.get().binaryDecoder(data, 5, data.length - 5, decoders.get());
                    decoders.set(decoder);
                    return reader.read(null, decoder);
                } catch (java.io.IOException e) {
                    throw new IllegalArgumentException("a clean record that does not decode", e);
                }
            }
        };
    }

    private static Serializer<GenericRecord> refuse() {
        return (topic, record) -> {
            throw new UnsupportedOperationException("the peer never writes clean records");
        };
    }
}
