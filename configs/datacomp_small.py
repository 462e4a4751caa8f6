"""DataComp's small scale, by its name: configs/datacomp.py, which is that setting.

The small pool (12.8M samples) selected with TADS for ImageNet-1k, CIFAR-100, MS-COCO and
Flickr30k, and evaluated at DataComp small's budget: 12.8M samples seen, batch 4096
(mlfoundations/datacomp scale_configs.py 'small'). configs/datacomp.py holds the setting
and stays, so that commands written for it keep working; this file only names it beside
configs/datacomp_medium.py. The data layout it expects is in configs/datacomp.py.

  python -m tads_jax.main --config configs/datacomp_small.py:/data/datacomp_small \
      --workdir /tmp/dc_small
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable-next=wrong-import-position,unused-import
from datacomp import DATA, get_config, tasks  # noqa: E402,F401
