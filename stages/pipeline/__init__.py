"""The pipeline's files: dvc.yaml generation from params.yaml, each stage's code dependencies, lock-file repair."""
