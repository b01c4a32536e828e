package io.adpipe.peer;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
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

    private final String registryUrl;
    private final HttpClient http = HttpClient.newHttpClient();
    private final ConcurrentHashMap<Integer, GenericDatumReader<GenericRecord>> readers = new ConcurrentHashMap<>();
    /** One decoder and record per stream thread, reused. */
    private final ThreadLocal<BinaryDecoder> decoders = new ThreadLocal<>();
    private final ThreadLocal<GenericRecord> records = new ThreadLocal<>();

    EventIdentities(String registryUrl) {
        this.registryUrl = registryUrl.replaceAll("/+$", "");
    }

    Identity read(byte[] value) {
        if (value == null || value.length < 5 || value[0] != 0) {
            throw new IllegalArgumentException("not in Confluent's wire format");
        }
        int schemaId = ByteBuffer.wrap(value, 1, 4).getInt();
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
        try {
            HttpResponse<String> response = http.send(
                    HttpRequest.newBuilder(URI.create(registryUrl + "/schemas/ids/" + id + "/schema")).build(),
                    HttpResponse.BodyHandlers.ofString());
            if (response.statusCode() != 200) {
                throw new IllegalStateException("registry: schema " + id + ": HTTP " + response.statusCode());
            }
            Schema writer = new Schema.Parser().parse(response.body());
            Schema reader = Schema.createRecord(writer.getName(), null, writer.getNamespace(), false, List.of(
                    new Schema.Field("event_id", Schema.create(Schema.Type.STRING)),
                    new Schema.Field("event_time", Schema.create(Schema.Type.LONG))));
            return new GenericDatumReader<>(writer, reader);
        } catch (IOException error) {
            throw new IllegalStateException("registry: schema " + id, error);
        } catch (InterruptedException error) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted", error);
        }
    }
}
