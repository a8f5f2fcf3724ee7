"""Past one machine, on Ray: sharded feature extraction and data-parallel fine-tuning.

``fit(..., cluster=...)`` uses ``ray_extractor`` for a frozen backbone and ``DataParallel`` for a
trainable one (``ray_workers=N``). Ray is an optional dependency: ``pip install 'finetune[ray]'``.
"""

from .cluster import ClusterError, check_reachable, connect
from .data_parallel import DataParallel
from .features import RayExtractor, ray_extractor
