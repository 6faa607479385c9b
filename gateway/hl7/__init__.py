"""The RIS feed's front end: HL7 v2 over MLLP (docs/hl7.md).

``mllp`` frames bytes, ``message`` decodes and reads the header, ``mapping`` turns a
parsed message into the feed's events (:mod:`worklist.feed`), ``ack`` encodes the answer
and maps core errors to answer codes (the one place), ``listener`` serves the connections
inside ``gatekeeper serve``, ``client`` sends files of messages (``gatekeeper hl7 send``).
Parsing is python-hl7's (``hl7`` on PyPI).
"""
