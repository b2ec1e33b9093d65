"""The trs-worker: consumes tasks from Kafka, runs them on the engine and produces results."""
