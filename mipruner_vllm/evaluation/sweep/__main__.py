# SPDX-License-Identifier: Apache-2.0
"""``python -m mipruner_vllm.evaluation.sweep``: the ``eval-sweep`` command."""

import sys

from mipruner_vllm.evaluation.sweep.cli import main

sys.exit(main())
