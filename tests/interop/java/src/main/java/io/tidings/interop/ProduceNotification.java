package io.tidings.interop;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Produces one NotificationRequested the way any Java service would: a GenericRecord built from the
 * .avsc file, Avro single-object encoding, key "tenant/recipient".
 *
 * Usage: ProduceNotification BOOTSTRAP TOPIC SCHEMA_FILE TENANT RECIPIENT NOTIFICATION_ID EVENT_ID OCCURRED_AT_MS
 */
public final class ProduceNotification {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], tenant = args[3], recipient = args[4];
        Schema schema = new Schema.Parser().parse(new File(args[2]));
        GenericRecord record = new GenericRecordBuilder(schema)
            .set("event_id", UUID.fromString(args[6]).toString())
            .set("tenant_id", tenant)
            .set("occurred_at", Long.parseLong(args[7]))
            .set("correlation_id", args[5])
            .set("notification_id", args[5])
            .set("recipient_id", recipient)
            .set("notification_type", "order.shipped")
            .set("data_json", "{\"order\":\"J-1\",\"total\":42.5,\"gift\":true}")
            .set("priority", "high")
            .set("channels", List.of("email", "push"))
            .set("locale", "de-AT")
            .set("recipient_overrides", Map.of("email", "jane@example.com"))
            .set("source", "java-interop")
            .build();
        BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
        ByteBuffer encoded = encoder.encode(record);
        byte[] value = new byte[encoded.remaining()];
        encoded.get(value);

        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(props)) {
            ProducerRecord<String, byte[]> out = new ProducerRecord<>(topic, tenant + "/" + recipient, value);
            out.headers().add("traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".getBytes(StandardCharsets.UTF_8));
            RecordMetadata meta = producer.send(out).get();
            System.out.printf("fingerprint=%016x partition=%d offset=%d%n",
                Long.reverseBytes(SchemaNormalization.parsingFingerprint64(schema)), meta.partition(), meta.offset());
        }
    }
}
