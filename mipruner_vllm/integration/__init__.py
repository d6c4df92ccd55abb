# SPDX-License-Identifier: Apache-2.0
"""Everything that imports vLLM lives under this package (and only here)."""
