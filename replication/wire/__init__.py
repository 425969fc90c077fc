"""What crosses the wire between replicas: the event codec, the hybrid logical clock, signed
requests and pages, version vectors."""
