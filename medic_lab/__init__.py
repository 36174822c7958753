"""The local ops lab: real Prometheus, Alertmanager, sshd hosts, demo services and faults."""
