"""The pipeline's steps. Each step module offers ``units(cfg)`` (its units of work),
``process_unit(cfg, unit)`` (one unit, raising on failure) and ``run(cfg, ...)``."""
