package io.adpipe.peer;

import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.Stores;
import org.apache.kafka.streams.state.WindowStore;
import org.apache.kafka.streams.state.WindowStoreIterator;

/**
 * The Kafka Streams peer of adpipe's benchmark: the same jobs, written the
 * way a Kafka Streams user would.
 *
 * <ul>
 *   <li>{@code passthrough}: bytes in, bytes out, no logic.</li>
 *   <li>{@code dedup}: Confluent's "finding distinct events" recipe — a
 *       persistent (RocksDB, changelog-backed) window store of event ids,
 *       an event dropped when its id was seen within the window around its
 *       record's timestamp. With {@code {kind}} in INPUT and OUTPUT, one
 *       per kind (the chain's).</li>
 *   <li>{@code merge}, {@code join}, {@code count}: the rest of the
 *       whole chain ({@link ChainJobs}).</li>
 * </ul>
 *
 * Client settings match adpipe's runtime: at-least-once, commit every
 * 100 ms, acks=all with idempotence, lz4, linger 5 ms, 256 KiB batches,
 * read_committed. Stops cleanly on SIGTERM.
 *
 * <p>Usage: {@code PeerJob passthrough|dedup|merge|join|count BOOTSTRAP
 * APPLICATION_ID INPUT OUTPUT STATE_DIR THREADS [REGISTRY_URL
 * WINDOW_HOURS|SCHEMAS_DIR]}
 */
public final class PeerJob {
    private static final String SEEN_STORE = "seen-event-ids";

    public static void main(String[] args) throws InterruptedException {
        if (args.length < 7) {
            System.err.println("usage: PeerJob passthrough|dedup|merge|join|count BOOTSTRAP APPLICATION_ID INPUT OUTPUT STATE_DIR THREADS [REGISTRY_URL WINDOW_HOURS|SCHEMAS_DIR]");
            System.exit(2);
        }
        String job = args[0];
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[2]);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        props.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(args[6]));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        props.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
        props.put(StreamsConfig.producerPrefix(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG), true);
        props.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "lz4");
        props.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        props.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 256 * 1024);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.ISOLATION_LEVEL_CONFIG), "read_committed");
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        StreamsBuilder builder = new StreamsBuilder();
        Produced<byte[], byte[]> produced = Produced.with(Serdes.ByteArray(), Serdes.ByteArray());
        Topology topology = null;
        switch (job) {
            case "passthrough" -> builder.stream(args[3], Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                    .to(args[4], produced);
            case "dedup" -> {
                Registry registry = new Registry(needs(args, 9, "REGISTRY_URL and WINDOW_HOURS")[7]);
                EventIdentities identities = new EventIdentities(registry);
                Duration window = Duration.ofHours(Long.parseLong(args[8]));
                // One input, or one per kind (the chain's): each its own
                // store, as each is its own sub-topology.
                List<String> kinds = args[3].contains("{kind}") ? ChainJobs.KINDS : List.of("");
                for (String kind : kinds) {
                    String store = SEEN_STORE + (kind.isEmpty() ? "" : "-" + kind);
                    builder.addStateStore(Stores.windowStoreBuilder(
                            Stores.persistentWindowStore(store, window.multipliedBy(2), window, false),
                            Serdes.String(), Serdes.Long()));
                    builder.stream(ChainJobs.topic(args[3], kind), Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                            .processValues(() -> new Deduplicate(identities, window.toMillis(), store), store)
                            .to(ChainJobs.topic(args[4], kind), produced);
                }
            }
            case "merge" -> ChainJobs.merge(builder, args[3], args[4]);
            case "join" -> {
                needs(args, 9, "REGISTRY_URL and SCHEMAS_DIR");
                topology = ChainJobs.join(args[3], args[4], new Registry(args[7]),
                        ChainJobs.Schemas.load(Path.of(args[8])));
            }
            case "count" -> {
                needs(args, 9, "REGISTRY_URL and SCHEMAS_DIR");
                ChainJobs.count(builder, args[3], args[4], new Registry(args[7]),
                        ChainJobs.Schemas.load(Path.of(args[8])));
            }
            default -> {
                System.err.println("unknown job " + job);
                System.exit(2);
            }
        }

        KafkaStreams streams = new KafkaStreams(topology != null ? topology : builder.build(), props);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            boolean clean = streams.close(Duration.ofSeconds(30));
            stopped.countDown();
            // A JVM stopped by SIGTERM exits with 143 even after a clean
            // close; say how the close went instead.
            Runtime.getRuntime().halt(clean ? 0 : 1);
        }));
        streams.setUncaughtExceptionHandler(error -> {
            error.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.SHUTDOWN_APPLICATION;
        });
        streams.start();
        stopped.await();
    }

    private static String[] needs(String[] args, int count, String what) {
        if (args.length < count) {
            System.err.println(args[0] + " needs " + what);
            System.exit(2);
        }
        return args;
    }

    /** Drops an event whose id was seen within the window around its time. */
    private static final class Deduplicate implements FixedKeyProcessor<byte[], byte[], byte[]> {
        private final EventIdentities identities;
        private final long windowMs;
        private FixedKeyProcessorContext<byte[], byte[]> context;
        private WindowStore<String, Long> seen;

        private final String storeName;

        Deduplicate(EventIdentities identities, long windowMs, String storeName) {
            this.identities = identities;
            this.windowMs = windowMs;
            this.storeName = storeName;
        }

        @Override
        public void init(FixedKeyProcessorContext<byte[], byte[]> context) {
            this.context = context;
            this.seen = context.getStateStore(storeName);
        }

        @Override
        public void process(FixedKeyRecord<byte[], byte[]> record) {
            EventIdentities.Identity identity = identities.read(record.value());
            // As in Confluent's recipe, the window is on the record's
            // timestamp (stream time): a backlog's event times may lie
            // further back than the store's retention, which would
            // silently drop the puts.
            long time = record.timestamp();
            try (WindowStoreIterator<Long> earlier = seen.fetch(identity.eventId(), time - windowMs, time + windowMs)) {
                if (earlier.hasNext()) {
                    return;
                }
            }
            seen.put(identity.eventId(), identity.eventTime(), time);
            context.forward(record);
        }
    }
}
