# SPDX-License-Identifier: Apache-2.0
"""Everything that touches vLLM internals (vLLM 0.32 and 0.33; see ``docs/plugin.md``).

* :mod:`.vllm_surface`: every vLLM name the project uses, the supported range, the load-time
  check, and the one runtime patch (``docs/vllm-support.md``).
* :mod:`.launch`: arming: architecture names, the engine/server flags that enable the plugin,
  the start-up check, and the CPU worker class (imports neither vLLM nor torch).
* :mod:`.query`, :mod:`.fields`: the query-text policy and the per-item fields (no vLLM).
* :mod:`.processing`: processor mixins (API-server process): validation, hashing, placeholders.
* :mod:`.mrope`: M-RoPE positions of pruned media (pure torch).
* :mod:`.models`: one module per model family (worker process): selection after the projector.

Only :mod:`.launch`, :mod:`.vllm_surface`, :mod:`.query`, :mod:`.fields` and :mod:`.mrope` can
be imported without vLLM.
"""
