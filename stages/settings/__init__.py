"""params.yaml: loaded, checked against its schema and the task's model, and turned into typed settings once."""
