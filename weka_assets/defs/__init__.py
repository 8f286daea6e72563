"""The Dagster layer: thin assets, checks, resources and sensors over the plain-Python core."""

import warnings

import dagster as dg

# Beta/preview APIs used on purpose (data versions, partition mappings, partitioned checks):
# filtered once here instead of at every call site.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
