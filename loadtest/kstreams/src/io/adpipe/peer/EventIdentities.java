package io.adpipe.peer;

import java.io.IOException;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;

/**
 * Reads an event's {@code event_id} and {@code event_time} from a record in
 * Confluent's wire format (magic 0, 4-byte schema id, Avro datum), as
 * adpipe's deduplicator does: the writer schema comes from the registry
 * (cached by id) and Avro's schema resolution skips every other field.
 */
final class EventIdentities {
    record Identity(String eventId, long eventTime) {}

    private final Registry registry;
    private final ConcurrentHashMap<Integer, GenericDatumReader<GenericRecord>> readers = new ConcurrentHashMap<>();
    /** One decoder and record per stream thread, reused. */
    private final ThreadLocal<BinaryDecoder> decoders = new ThreadLocal<>();
    private final ThreadLocal<GenericRecord> records = new ThreadLocal<>();

    EventIdentities(Registry registry) {
        this.registry = registry;
    }

    Identity read(byte[] value) {
        int schemaId = Registry.schemaId(value);
        GenericDatumReader<GenericRecord> reader = readers.computeIfAbsent(schemaId, this::projection);
        BinaryDecoder decoder = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, decoders.get());
        decoders.set(decoder);
        try {
            GenericRecord record = reader.read(records.get(), decoder);
            records.set(record);
            return new Identity(record.get(0).toString(), (Long) record.get(1));
        } catch (IOException error) {
            throw new IllegalArgumentException("undecodable Avro datum", error);
        }
    }

    /** A reader of the writer schema `id` projected onto the two fields. */
    private GenericDatumReader<GenericRecord> projection(int id) {
        Schema writer = registry.writerSchema(id);
        Schema reader = Schema.createRecord(writer.getName(), null, writer.getNamespace(), false, List.of(
                new Schema.Field("event_id", Schema.create(Schema.Type.STRING)),
                new Schema.Field("event_time", Schema.create(Schema.Type.LONG))));
        return new GenericDatumReader<>(writer, reader);
    }
}
