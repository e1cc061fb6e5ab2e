"""Media I/O on PyAV: probe, exact-range decode, chunk encode, packet-remux assembly."""
