package io.adpipe.peer;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The rest of the chain's peer — merge, join, count — written as a Kafka
 * Streams user would, for the whole-chain benchmark (the dedup is
 * {@link PeerJob}'s). Topic arguments are templates: {@code {kind}} stands
 * for {@code impressions}, {@code clicks}, {@code conversions} (and
 * {@code orphans} among the joiner's outputs); a comma separates several.
 *
 * <p>What each does less than adpipe's service (so the comparison, if
 * anything, favours the peer):
 * <ul>
 *   <li>merge: Kafka Streams' own timestamp order across a task's input
 *       partitions; no origin headers, no shared heads across instances,
 *       no idle-DC watermarks.</li>
 *   <li>join: the rules of design.md with RocksDB stores; an event whose
 *       partner is missing is held (a RocksDB store) until its partner's
 *       input has passed its time in the task, as adpipe's joiner waits
 *       for its inputs' watermarks, or its inputs have been idle 60 s
 *       (adpipe's 60-s wait counts from each record's arrival); the
 *       last click is kept per (user, advertiser), not a per-user list; a
 *       held record loses its headers.</li>
 *   <li>count: minute and hour totals per dimensions and orphans per
 *       (bucket, kind, reason) through a repartition and a RocksDB
 *       aggregate, emitted to a compacted topic — no PostgreSQL.</li>
 * </ul>
 */
final class ChainJobs {
    static final List<String> KINDS = List.of("impressions", "clicks", "conversions");
    private static final long THIRTY_DAYS_MS = Duration.ofDays(30).toMillis();
    private static final long MINUTE_MS = 60_000;
    private static final long HOUR_MS = 3_600_000;

    private ChainJobs() {}

    static String topic(String template, String kind) {
        return template.replace("{kind}", kind);
    }

    static List<String> topics(String templates, String kind) {
        return Arrays.stream(templates.split(",")).map(template -> topic(template, kind)).toList();
    }

    /** Every DC's topic of a kind into the merged topic of that kind. */
    static void merge(StreamsBuilder builder, String inputs, String output) {
        for (String kind : KINDS) {
            builder.stream(topics(inputs, kind), Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                    .to(topic(output, kind), Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
        }
    }

    /** The joined schemas and the nested reader schemas of the inputs. */
    record Schemas(Schema joinedClick, Schema joinedConversion, Schema impression, Schema click, Schema conversion) {
        static Schemas load(Path dir) {
            try {
                Schema joinedClick = new Schema.Parser().parse(Files.readString(dir.resolve("joined_click.avsc")));
                Schema joinedConversion =
                        new Schema.Parser().parse(Files.readString(dir.resolve("joined_conversion.avsc")));
                return new Schemas(joinedClick, joinedConversion,
                        joinedClick.getField("impression").schema(),
                        joinedClick.getField("click").schema(),
                        joinedConversion.getField("conversion").schema());
            } catch (IOException error) {
                throw new IllegalStateException("schemas: " + error.getMessage(), error);
            }
        }
    }

    private static final String IMPRESSIONS = "impressions-by-id";
    private static final String CLICKS = "clicks-by-id";
    private static final String LAST_CLICKS = "last-click-by-user-advertiser";
    private static final String HELD = "held-for-a-partner";
    /** How long the join's inputs must be idle before what waits is an orphan. */
    private static final long WAIT_MS = 60_000;
    /** How far an input's record times may step back. */
    private static final long GRACE_MS = 2_000;

    /** The joiner: one processor over the three co-partitioned inputs. */
    static Topology join(String inputs, String outputs, Registry registry, Schemas schemas) {
        int joinedClickId = registry.register(topic(outputs, "clicks") + "-value", schemas.joinedClick());
        int joinedConversionId = registry.register(topic(outputs, "conversions") + "-value", schemas.joinedConversion());
        Topology topology = new Topology();
        String[] sources = KINDS.stream().map(kind -> topic(inputs, kind)).toArray(String[]::new);
        topology.addSource("events", Serdes.ByteArray().deserializer(), Serdes.ByteArray().deserializer(), sources);
        topology.addProcessor("join",
                () -> new Join(registry, schemas, sources, joinedClickId, joinedConversionId), "events");
        topology.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(IMPRESSIONS), Serdes.String(), Serdes.ByteArray()), "join");
        topology.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(CLICKS), Serdes.String(), Serdes.ByteArray()), "join");
        topology.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(LAST_CLICKS), Serdes.String(), Serdes.String()), "join");
        topology.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(HELD), Serdes.String(), Serdes.ByteArray()), "join");
        for (String output : List.of("clicks", "conversions", "orphans")) {
            topology.addSink(output, topic(outputs, output),
                    Serdes.ByteArray().serializer(), Serdes.ByteArray().serializer(), "join");
        }
        return topology;
    }

    private static final class Join implements Processor<byte[], byte[], byte[], byte[]> {
        /** A click whose impression was missing: its conversions are orphans too. */
        private static final byte[] ORPHANED = new byte[0];

        private final Registry registry;
        private final Schemas schemas;
        private final String[] sources;
        private final int joinedClickId;
        private final int joinedConversionId;
        private final GenericData.EnumSymbol clickIdAttribution;
        private final GenericData.EnumSymbol lastClickAttribution;
        private ProcessorContext<byte[], byte[]> context;
        private KeyValueStore<String, byte[]> impressions;
        private KeyValueStore<String, byte[]> clicks;
        private KeyValueStore<String, String> lastClicks;
        /** Clicks and conversions waiting for their partner, by kind and time. */
        private KeyValueStore<String, byte[]> held;
        /** The newest impression's and click's record time in this task (its inputs' progress). */
        private long impressionsTime = Long.MIN_VALUE;
        private long clicksTime = Long.MIN_VALUE;
        /** When an impression or click last came (wall clock). */
        private long lastProgress = System.currentTimeMillis();

        Join(Registry registry, Schemas schemas, String[] sources, int joinedClickId, int joinedConversionId) {
            this.registry = registry;
            this.schemas = schemas;
            this.sources = sources;
            this.joinedClickId = joinedClickId;
            this.joinedConversionId = joinedConversionId;
            Schema attribution = schemas.joinedConversion().getField("attribution").schema();
            this.clickIdAttribution = new GenericData.EnumSymbol(attribution, "CLICK_ID");
            this.lastClickAttribution = new GenericData.EnumSymbol(attribution, "LAST_CLICK");
        }

        @Override
        public void init(ProcessorContext<byte[], byte[]> context) {
            this.context = context;
            this.impressions = context.getStateStore(IMPRESSIONS);
            this.clicks = context.getStateStore(CLICKS);
            this.lastClicks = context.getStateStore(LAST_CLICKS);
            this.held = context.getStateStore(HELD);
            context.schedule(Duration.ofMillis(200), PunctuationType.WALL_CLOCK_TIME, this::retryHeld);
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            String topic = context.recordMetadata().orElseThrow().topic();
            if (topic.equals(sources[0])) {
                GenericRecord impression = registry.decode(record.value(), schemas.impression());
                impressions.put(impression.get("event_id").toString(), record.value());
                impressionsTime = Math.max(impressionsTime, record.timestamp());
                lastProgress = System.currentTimeMillis();
            } else {
                int kind = topic.equals(sources[1]) ? 1 : 2;
                if (kind == 1) {
                    clicksTime = Math.max(clicksTime, record.timestamp());
                    lastProgress = System.currentTimeMillis();
                } else {
                    decideDue(1); // the clicks it may be attributed to
                }
                // Decided now when its partner is there, or when the
                // partner's input has passed its time; held otherwise.
                if (!attempt(kind, record, record.timestamp() < decidedTime(kind))) {
                    hold(kind, record);
                }
            }
        }

        /**
         * A record of `kind` older than this may be decided: its partners'
         * inputs have passed it by GRACE_MS (Kafka Streams' merge orders
         * its inputs by time only roughly: an input's times step back a
         * little now and then).
         */
        private long decidedTime(int kind) {
            long passed = kind == 1 ? impressionsTime : Math.min(impressionsTime, clicksTime);
            return passed == Long.MIN_VALUE ? passed : passed - GRACE_MS;
        }

        /** Joins or orphans a click (1) or conversion (2); false: wait for its partner (not `last`). */
        private boolean attempt(int kind, Record<byte[], byte[]> record, boolean last) {
            return kind == 1 ? click(record, last) : conversion(record, last);
        }

        /**
         * Keeps a record until its partner's input passes its time (the key
         * orders by kind, then time) or the inputs have been idle for
         * WAIT_MS (their end).
         */
        private void hold(int kind, Record<byte[], byte[]> record) {
            var metadata = context.recordMetadata().orElseThrow();
            String key = String.format("%d|%013d|%d|%d", kind, record.timestamp(), metadata.partition(), metadata.offset());
            byte[] recordKey = record.key() == null ? new byte[0] : record.key();
            ByteBuffer value = ByteBuffer.allocate(12 + recordKey.length + record.value().length);
            value.putLong(record.timestamp())
                    .putInt(recordKey.length).put(recordKey).put(record.value());
            held.put(key, value.array());
        }

        /** Decides the held records whose partners' inputs have passed them, and any past its deadline. */
        private void retryHeld(long now) {
            decideDue(1);
            decideDue(2);
            if (now - lastProgress >= WAIT_MS) {
                // The inputs are idle (their end): what still waits is an orphan.
                decide(held.all());
                lastProgress = now;
            }
        }

        /** Decides the held records of `kind` whose partners' inputs have passed them. */
        private void decideDue(int kind) {
            long decided = decidedTime(kind);
            if (decided != Long.MIN_VALUE) {
                // Times before `decided` (equal times may still be on their way).
                decide(held.range(kind + "|", String.format("%d|%013d|~", kind, decided - 1)));
            }
        }

        private void decide(KeyValueIterator<String, byte[]> entries) {
            List<KeyValue<String, byte[]>> due = new ArrayList<>();
            try (entries) {
                while (entries.hasNext()) {
                    KeyValue<String, byte[]> entry = entries.next();
                    due.add(entry);
                }
            }
            for (KeyValue<String, byte[]> entry : due) {
                ByteBuffer value = ByteBuffer.wrap(entry.value);
                long timestamp = value.getLong();
                byte[] key = new byte[value.getInt()];
                value.get(key);
                byte[] bytes = new byte[value.remaining()];
                value.get(bytes);
                attempt(entry.key.charAt(0) - '0', new Record<>(key, bytes, timestamp), true);
                held.delete(entry.key);
            }
        }

        private boolean click(Record<byte[], byte[]> record, boolean last) {
            GenericRecord click = registry.decode(record.value(), schemas.click());
            String clickId = click.get("event_id").toString();
            byte[] impressionValue = impressions.get(click.get("impression_id").toString());
            if (impressionValue == null) {
                if (!last) {
                    return false;
                }
                clicks.put(clickId, ORPHANED);
                orphan(record, "click", "impression_not_found");
                return true;
            }
            GenericRecord impression = registry.decode(impressionValue, schemas.impression());
            GenericRecord joined = new GenericData.Record(schemas.joinedClick());
            joined.put("click", click);
            joined.put("impression", impression);
            byte[] value = Registry.encode(joinedClickId, joined);
            clicks.put(clickId, value);
            String latest = click.get("user_id") + "\u0000" + impression.get("advertiser_id");
            String previous = lastClicks.get(latest);
            if (previous == null || later(click, previous)) {
                lastClicks.put(latest, clickId);
            }
            context.forward(record.withValue(value), "clicks");
            return true;
        }

        /** Whether `click` is later than the stored click `otherId` (time, then id). */
        private boolean later(GenericRecord click, String otherId) {
            byte[] other = clicks.get(otherId);
            if (other == null || other.length == 0) {
                return true;
            }
            GenericRecord otherClick = (GenericRecord) registry.decode(other, schemas.joinedClick()).get("click");
            int byTime = Long.compare((Long) click.get("event_time"), (Long) otherClick.get("event_time"));
            return byTime > 0 || (byTime == 0 && click.get("event_id").toString().compareTo(otherId) > 0);
        }

        private boolean conversion(Record<byte[], byte[]> record, boolean last) {
            GenericRecord conversion = registry.decode(record.value(), schemas.conversion());
            Object namedClick = conversion.get("click_id");
            String clickId = namedClick != null
                    ? namedClick.toString()
                    : lastClicks.get(conversion.get("user_id") + "\u0000" + conversion.get("advertiser_id"));
            byte[] joinedClickValue = clickId == null ? null : clicks.get(clickId);
            if (joinedClickValue == null) {
                if (!last) {
                    return false;
                }
                orphan(record, "conversion", clickId == null ? "no_click" : "click_not_found");
                return true;
            }
            if (joinedClickValue.length == 0) {
                orphan(record, "conversion", "impression_not_found");
                return true;
            }
            GenericRecord joinedClick = registry.decode(joinedClickValue, schemas.joinedClick());
            GenericRecord click = (GenericRecord) joinedClick.get("click");
            if (!click.get("user_id").toString().equals(conversion.get("user_id").toString())) {
                orphan(record, "conversion", "click_user_mismatch");
                return true;
            }
            long age = (Long) conversion.get("event_time") - (Long) click.get("event_time");
            if (age > THIRTY_DAYS_MS || (namedClick == null && age < 0)) {
                orphan(record, "conversion", namedClick == null ? "no_click" : "outside_window");
                return true;
            }
            GenericRecord joined = new GenericData.Record(schemas.joinedConversion());
            joined.put("conversion", conversion);
            joined.put("click", click);
            joined.put("impression", joinedClick.get("impression"));
            joined.put("attribution", namedClick != null ? clickIdAttribution : lastClickAttribution);
            context.forward(record.withValue(Registry.encode(joinedConversionId, joined)), "conversions");
            return true;
        }

        private void orphan(Record<byte[], byte[]> record, String kind, String reason) {
            Headers headers = record.headers();
            headers.add("adpipe.orphan.reason", reason.getBytes(StandardCharsets.UTF_8));
            headers.add("adpipe.orphan.kind", kind.getBytes(StandardCharsets.UTF_8));
            context.forward(record, "orphans");
        }
    }

    /** What one event adds to a total: impressions, clicks, conversions, cost, value. */
    static final class Totals {
        final long[] sums = new long[5];

        static final Serde<Totals> SERDE = Serdes.serdeFrom(
                (Serializer<Totals>) (topic, totals) -> {
                    ByteBuffer buffer = ByteBuffer.allocate(8 * totals.sums.length);
                    for (long sum : totals.sums) {
                        buffer.putLong(sum);
                    }
                    return buffer.array();
                },
                (Deserializer<Totals>) (topic, bytes) -> {
                    Totals totals = new Totals();
                    ByteBuffer buffer = ByteBuffer.wrap(bytes);
                    for (int i = 0; i < totals.sums.length; i++) {
                        totals.sums[i] = buffer.getLong();
                    }
                    return totals;
                });

        static Totals of(long impressions, long clicks, long conversions, long cost, long value) {
            Totals totals = new Totals();
            totals.sums[0] = impressions;
            totals.sums[1] = clicks;
            totals.sums[2] = conversions;
            totals.sums[3] = cost;
            totals.sums[4] = value;
            return totals;
        }

        Totals add(Totals other) {
            for (int i = 0; i < sums.length; i++) {
                sums[i] += other.sums[i];
            }
            return this;
        }
    }

    /**
     * The stats: each event's contribution keyed by (bucket size, bucket,
     * dimensions), re-keyed (a repartition) and summed in a RocksDB
     * aggregate whose updates go to the compacted totals topic.
     * {@code inputs} names the deduplicated impressions, joined clicks,
     * joined conversions and orphans, in that order.
     */
    static void count(StreamsBuilder builder, String inputs, String output, Registry registry, Schemas schemas) {
        List<String> topics = Arrays.asList(inputs.split(","));
        if (topics.size() != 4) {
            throw new IllegalArgumentException("count reads impressions,clicks,conversions,orphans");
        }
        Consumed<byte[], byte[]> consumed = Consumed.with(Serdes.ByteArray(), Serdes.ByteArray());
        KStream<String, Totals> impressions = builder.stream(topics.get(0), consumed).flatMap((key, value) -> {
            GenericRecord impression = registry.decode(value, schemas.impression());
            return contributions(impression, (Long) impression.get("event_time"), impression.get("currency"),
                    Totals.of(1, 0, 0, (Long) impression.get("cost_micros"), 0));
        });
        KStream<String, Totals> clicks = builder.stream(topics.get(1), consumed).flatMap((key, value) -> {
            GenericRecord joined = registry.decode(value, schemas.joinedClick());
            GenericRecord impression = (GenericRecord) joined.get("impression");
            return contributions(impression, (Long) ((GenericRecord) joined.get("click")).get("event_time"),
                    impression.get("currency"), Totals.of(0, 1, 0, 0, 0));
        });
        KStream<String, Totals> conversions = builder.stream(topics.get(2), consumed).flatMap((key, value) -> {
            GenericRecord joined = registry.decode(value, schemas.joinedConversion());
            GenericRecord conversion = (GenericRecord) joined.get("conversion");
            return contributions((GenericRecord) joined.get("impression"), (Long) conversion.get("event_time"),
                    conversion.get("currency"), Totals.of(0, 0, 1, 0, (Long) conversion.get("value_micros")));
        });
        KStream<String, Totals> orphans = builder.stream(topics.get(3), consumed)
                .process(() -> new OrphanCount(registry));
        impressions.merge(clicks).merge(conversions).merge(orphans)
                .groupByKey(Grouped.with("totals", Serdes.String(), Totals.SERDE))
                .aggregate(Totals::new, (key, contribution, totals) -> totals.add(contribution),
                        Materialized.<String, Totals, KeyValueStore<Bytes, byte[]>>as("totals")
                                .withKeySerde(Serdes.String()).withValueSerde(Totals.SERDE))
                .toStream()
                .to(output, Produced.with(Serdes.String(), Totals.SERDE));
    }

    /** An orphan counts once per (bucket, kind, reason) at its own time, in a minute and an hour bucket. */
    private static final class OrphanCount implements Processor<byte[], byte[], String, Totals> {
        private final Registry registry;
        private ProcessorContext<String, Totals> context;

        OrphanCount(Registry registry) {
            this.registry = registry;
        }

        @Override
        public void init(ProcessorContext<String, Totals> context) {
            this.context = context;
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            byte[] value = record.value();
            long time = (Long) registry.decode(value, registry.writerSchema(Registry.schemaId(value))).get("event_time");
            String what = header(record, "adpipe.orphan.kind") + "|" + header(record, "adpipe.orphan.reason");
            context.forward(new Record<>("orphan|minute|" + (time - Math.floorMod(time, MINUTE_MS)) + "|" + what,
                    Totals.of(1, 0, 0, 0, 0), record.timestamp()));
            context.forward(new Record<>("orphan|hour|" + (time - Math.floorMod(time, HOUR_MS)) + "|" + what,
                    Totals.of(1, 0, 0, 0, 0), record.timestamp()));
        }

        private static String header(Record<byte[], byte[]> record, String name) {
            var header = record.headers().lastHeader(name);
            return header == null ? "" : new String(header.value(), StandardCharsets.UTF_8);
        }
    }

    /** The minute's and the hour's key of an event under an impression's dimensions. */
    private static List<KeyValue<String, Totals>> contributions(
            GenericRecord impression, long time, Object currency, Totals totals) {
        String dimensions = impression.get("campaign_id") + "|" + impression.get("creative_id") + "|"
                + impression.get("advertiser_id") + "|" + impression.get("publisher_id") + "|"
                + impression.get("site") + "|" + impression.get("ssp") + "|" + impression.get("country") + "|"
                + impression.get("dc") + "|" + currency;
        List<KeyValue<String, Totals>> keys = new ArrayList<>(2);
        keys.add(KeyValue.pair("minute|" + (time - Math.floorMod(time, MINUTE_MS)) + "|" + dimensions, totals));
        keys.add(KeyValue.pair("hour|" + (time - Math.floorMod(time, HOUR_MS)) + "|" + dimensions, totals));
        return keys;
    }
}
