"""`corpus_registry_sensor`: every catalogued corpus becomes a partition without manual steps."""

import dagster as dg

from weka_assets.defs.partitions import corpus_partitions
from weka_assets.defs.resources import CorpusCatalog


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def corpus_registry_sensor(
    context: dg.SensorEvaluationContext, catalog: CorpusCatalog
) -> dg.SensorResult:
    """Add a corpus partition for each catalog entry that has none yet."""
    known = set(context.instance.get_dynamic_partitions(corpus_partitions.name))
    new = [name for name in catalog.names() if name not in known]
    if not new:
        return dg.SensorResult(skip_reason="every catalogued corpus already has a partition")
    context.log.info(f"registering corpus partitions: {', '.join(new)}")
    return dg.SensorResult(dynamic_partitions_requests=[corpus_partitions.build_add_request(new)])
