"""Frame transports: shared memory, Spout, NDI, Syphon, files, the test pattern, and the spec registry."""
