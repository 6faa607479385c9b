"""The command line: argv parsing (:mod:`.main`) and printing, one module per capability."""
