"""Running a stage job: in this process, in a subprocess (another Python environment) or under
`accelerate launch` (`launch`), and the command line every stage module shares (`stage_cli`)."""
