"""The tables: the engine writes jobs and runs as the domains do, so they live here, beside the application tables
the built-in job types work on (app_tables) and the sample catalogue metadata-sync reads by default."""
