"""Network services, command line, settings and wiring of the imaging gatekeeper."""
