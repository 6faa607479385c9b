"""The DICOM front end: server wiring (:mod:`.server`), one module per service, statuses in one place."""
