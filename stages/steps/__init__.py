"""The pipeline's steps, one module per `gps` command that dvc.yaml runs (stages.main registers them)."""
