//! Tests of the NATS sink against a nats-server, when one is installed.
