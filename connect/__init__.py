"""The core: records, builder, runtime, configuration, CLI, errors and logging."""
