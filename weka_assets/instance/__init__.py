"""Tools that drive a Dagster instance for the command line (materialize, stale and
backfill-stale, launch on a deployment): they use the definitions, they are not part of them."""
