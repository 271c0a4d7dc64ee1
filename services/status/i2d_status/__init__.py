"""The status service: a read-only dashboard, REST API and /metrics over the index, the store
and (when distributed) the Kafka consumer lag."""
