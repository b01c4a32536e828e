package io.adpipe.peer;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;

/**
 * Records in Confluent's wire format (magic 0, 4-byte schema id, Avro datum)
 * against a Confluent-compatible registry, as a Kafka Streams user's own
 * serde would read and write them: writer schemas fetched once per id,
 * resolved onto the reader schema the job asks for; schemas registered
 * under a subject for the ids of what the job writes.
 */
final class Registry {
    private static final Pattern ID = Pattern.compile("\"id\"\\s*:\\s*(\\d+)");

    private final String url;
    private final HttpClient http = HttpClient.newHttpClient();
    private final ConcurrentHashMap<Integer, Schema> writers = new ConcurrentHashMap<>();
    /** Readers by (writer id, reader schema), the reader schema by identity. */
    private final ConcurrentHashMap<Schema, ConcurrentHashMap<Integer, GenericDatumReader<GenericRecord>>> readers =
            new ConcurrentHashMap<>();

    Registry(String url) {
        this.url = url.replaceAll("/+$", "");
    }

    /** The writer schema of a record's value. */
    static int schemaId(byte[] value) {
        if (value == null || value.length < 5 || value[0] != 0) {
            throw new IllegalArgumentException("not in Confluent's wire format");
        }
        return ByteBuffer.wrap(value, 1, 4).getInt();
    }

    /** The schema registered under `id`. */
    Schema writerSchema(int id) {
        return writers.computeIfAbsent(id, key -> new Schema.Parser().parse(get("/schemas/ids/" + key + "/schema")));
    }

    /** Decodes a framed value into `reader` (Avro schema resolution). */
    GenericRecord decode(byte[] value, Schema reader) {
        int id = schemaId(value);
        GenericDatumReader<GenericRecord> datumReader = readers
                .computeIfAbsent(reader, key -> new ConcurrentHashMap<>())
                .computeIfAbsent(id, key -> new GenericDatumReader<>(writerSchema(key), reader));
        BinaryDecoder decoder = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null);
        try {
            return datumReader.read(null, decoder);
        } catch (IOException error) {
            throw new IllegalArgumentException("undecodable Avro datum", error);
        }
    }

    /** Registers `schema` under `subject`; its id. */
    int register(String subject, Schema schema) {
        String body = "{\"schema\":" + quote(schema.toString()) + "}";
        String response = send(HttpRequest.newBuilder(URI.create(url + "/subjects/" + subject + "/versions"))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .POST(HttpRequest.BodyPublishers.ofString(body))
                .build());
        Matcher id = ID.matcher(response);
        if (!id.find()) {
            throw new IllegalStateException("registry: no id in " + response);
        }
        return Integer.parseInt(id.group(1));
    }

    /** `record` framed with schema `id`. */
    static byte[] encode(int id, GenericRecord record) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(512);
        out.write(0);
        out.writeBytes(ByteBuffer.allocate(4).putInt(id).array());
        BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
        try {
            new GenericDatumWriter<GenericRecord>(record.getSchema()).write(record, encoder);
            encoder.flush();
        } catch (IOException error) {
            throw new UncheckedIOException(error);
        }
        return out.toByteArray();
    }

    private String get(String path) {
        return send(HttpRequest.newBuilder(URI.create(url + path)).build());
    }

    private String send(HttpRequest request) {
        try {
            HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
            if (response.statusCode() != 200) {
                throw new IllegalStateException("registry: " + request.uri() + ": HTTP " + response.statusCode());
            }
            return response.body();
        } catch (IOException error) {
            throw new UncheckedIOException(error);
        } catch (InterruptedException error) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted", error);
        }
    }

    private static String quote(String text) {
        return "\"" + text.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }
}
