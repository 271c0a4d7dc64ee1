"""Test bench: real Kafka (Tansu), S3 (moto server) and PostgreSQL on free loopback ports."""

pytest_plugins = [
    "tests.servers.kafka",
    "tests.servers.s3",
    "tests.servers.postgres",
]
