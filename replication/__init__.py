"""Moving data between replicas: the event codec, clocks, version vectors, outbox and transport."""
