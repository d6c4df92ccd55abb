# SPDX-License-Identifier: Apache-2.0
"""Everything that touches vLLM internals (vLLM 0.32; see ``docs/plugin.md``).

* :mod:`.launch`: architecture names and the engine/server flags that enable the plugin
  (imports neither vLLM nor torch).
* :mod:`.compat`: the supported vLLM range and the load-time version check.
* :mod:`.query`, :mod:`.fields`: the query-text policy and the per-item fields (no vLLM).
* :mod:`.processing`: processor mixins (API-server process): validation, hashing, placeholders.
* :mod:`.mrope`: M-RoPE positions of pruned media (pure torch).
* :mod:`.models`: one module per model family (worker process): selection after the projector.
* :mod:`.workers`: the CPU worker class that arms vLLM's position recompute.

Only :mod:`.launch`, :mod:`.compat`, :mod:`.query`, :mod:`.fields` and :mod:`.mrope` can be
imported without vLLM.
"""
