"""The status service: a read-only dashboard, REST API and /metrics over the index, the store
and the consumer lag of the bus (Kafka, or an output folder's durable bus) when there is one."""
